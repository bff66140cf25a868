"""Layer-level solver comparison on real SmolLM2-135M layers: relative proxy loss
tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) and all-in bits/weight for GPTQ and GPTVQ settings, on the same
Hessians in the same run (how the gptvq presets were chosen).

Hessians come from the original (unquantized) model's activations on ``--calib-windows``
pydoc calibration windows, for the 7 Linears of decoder block ``--block``.

    .venv/bin/python bench/llm_layer_proxy.py --block 15

The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import torch

from vq.weights import data, hf
from vq.weights.gptq import GPTQConfig, gptq_quantize
from vq.weights.gptvq import GPTVQConfig, gptvq_quantize
from vq.weights.hessian import proxy_loss
from vq.weights.pipeline import block_hessians, block_inputs, run_block

from _report import print_result

CANDIDATES = {
    "gptq 2-bit g128 act-order": GPTQConfig(bits=2, act_order=True),
    "gptvq d=2 K=16 (2D, 2 bits)": GPTVQConfig(dim=2, index_bits=4, weights_per_codebook=2048),
    "gptvq d=3 K=64 (2 bits)": GPTVQConfig(dim=3, index_bits=6, weights_per_codebook=8192),
    "gptvq d=4 K=256 no update": GPTVQConfig(dim=4, index_bits=8, update_iters=0),
    "gptvq d=4 K=256 (2-bit preset)": GPTVQConfig(dim=4, index_bits=8),
    "gptq 3-bit g128 act-order": GPTQConfig(bits=3, act_order=True),
    "gptvq d=2 K=64 (3 bits)": GPTVQConfig(dim=2, index_bits=6, weights_per_codebook=4096),
    "gptvq d=3 K=512 (3-bit preset)": GPTVQConfig(dim=3, index_bits=9, weights_per_codebook=65536),
}


@dataclass(frozen=True)
class Experiment:
    block: int = 15
    calib_windows: int = 32
    threads: int = 1


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=Experiment.block)
    p.add_argument("--calib-windows", type=int, default=Experiment.calib_windows)
    p.add_argument("--threads", type=int, default=Experiment.threads)
    a = p.parse_args(argv)
    exp = Experiment(a.block, a.calib_windows, a.threads)
    torch.set_num_threads(exp.threads)
    model, tok = hf.load_model("smollm2"), hf.load_tokenizer("smollm2")
    calib = data.calibration_windows(tok, n=exp.calib_windows)
    blocks = hf.decoder_blocks(model)
    with torch.no_grad():
        x, kwargs = block_inputs(model, calib, 8)
        for i in range(exp.block):
            x = run_block(blocks[i], x, kwargs, 8, f"block {i}")
        linears = hf.block_linears(blocks[exp.block])
        hess = block_hessians(blocks[exp.block], linears, x, kwargs, 8, f"block {exp.block}")
    rows = []
    for name, cfg in CANDIDATES.items():
        t0 = time.perf_counter()
        rel, nbits, nw = [], 0, 0
        for lname, mod in linears.items():
            W, H = mod.weight.detach().float(), hess[lname].H
            q = gptq_quantize(W, H, cfg) if isinstance(cfg, GPTQConfig) else gptvq_quantize(W, H, cfg)
            rel.append(proxy_loss(W, q.dense(), H) / proxy_loss(W, torch.zeros_like(W), H))
            nbits += q.nbits()
            nw += W.numel()
        rows.append({"solver": name, "bits_per_weight": nbits / nw, "mean_rel_proxy_loss": sum(rel) / len(rel),
                     "per_layer": dict(zip(linears, rel)), "seconds": time.perf_counter() - t0})
        print(f"{name:32s} {nbits / nw:6.3f} bits/w  mean rel. proxy loss {sum(rel) / len(rel):.4f}", flush=True)
    out = {"experiment": asdict(exp), "rows": rows}
    print_result(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
