"""Peak memory while loading a compressed model, against the size of the dense fp32 model.

    .venv/bin/python bench/hf_load_memory.py COMPRESSED_DIR [--loaders from_pretrained vq.load]

Each loader runs in a fresh process: import torch, transformers and vq, then reset the kernel's
peak-RSS counter (``echo 5 > /proc/self/clear_refs``), load, and read the peak (``VmHWM``) and
the current RSS (``VmRSS``) from ``/proc/self/status``. Reported: peak − RSS before loading, i.e.
every byte the load touched at its worst moment — tensors, allocator slack, and the pages of the
mmapped safetensors file it read. A tensor stored in the dtype it is loaded in may stay backed by
the mmapped file, untouched, so the bench also reads every tensor of the loaded model once and
reports the RSS then (``resident_touched_mib``: the loaded model's real footprint). ``from_pretrained`` is ``import vq;
AutoModelForCausalLM.from_pretrained(DIR)``; ``vq.load`` is :func:`vq.load`. The dense fp32
size is ``4 × (parameters of the architecture in config.json)``, counted on the meta device
(tied embeddings once). Linux only. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

LOADERS = ("from_pretrained", "vq.load")


@dataclass(frozen=True)
class Experiment:
    model_dir: str
    loaders: tuple[str, ...] = LOADERS
    threads: int = 1

    def __post_init__(self) -> None:
        bad = [name for name in self.loaders if name not in LOADERS]
        if bad:
            raise ValueError(f"unknown loaders {bad}; known: {LOADERS}")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_in_this_process(model_dir: str, loader: str, threads: int) -> dict:
    """Load once in this process and return its memory figures (MiB)."""
    import torch
    import transformers  # noqa: F401 (imported before the baseline)
    from transformers import AutoModelForCausalLM

    import vq
    import vq.weights.format  # noqa: F401
    import vq.weights.hf_quantizer  # noqa: F401

    torch.set_num_threads(threads)
    import transformers.modeling_utils  # noqa: F401 (its import is not part of loading)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir) if loader == "from_pretrained" else vq.load(model_dir)
    seconds = time.perf_counter() - t0
    peak, after = _status_kib("VmHWM"), _status_kib("VmRSS")
    with torch.no_grad():  # read every tensor once: pages still only mmapped become resident
        for t in model.state_dict().values():
            t.sum()
    touched = _status_kib("VmRSS")
    n_vq = sum(type(m).__name__ == "VQLinear" for m in model.modules())
    return {"loader": loader, "peak_mib": (peak - before) / 1024, "resident_after_mib": (after - before) / 1024,
            "resident_touched_mib": (touched - before) / 1024, "seconds": seconds, "vq_linears": n_vq}


def dense_fp32_mib(model_dir: str) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return sum(p.numel() for p in model.parameters()) * 4 / 2**20  # parameters() lists tied ones once


def run(exp: Experiment) -> dict:
    rows = []
    for loader in exp.loaders:
        out = subprocess.run(
            [sys.executable, __file__, exp.model_dir, "--child", loader, "--threads", str(exp.threads)],
            capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    dense = dense_fp32_mib(exp.model_dir)
    for r in rows:
        r["peak_over_dense_fp32"] = r["peak_mib"] / dense
    return {"experiment": asdict(exp), "dense_fp32_mib": dense, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--loaders", nargs="+", default=list(LOADERS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.child:
        print(json.dumps(measure_in_this_process(args.model_dir, args.child, args.threads)))
        return
    result = run(Experiment(args.model_dir, tuple(args.loaders), args.threads))
    print(f"dense fp32 model: {result['dense_fp32_mib']:.1f} MiB")
    for r in result["rows"]:
        print(f"{r['loader']:>16}: peak {r['peak_mib']:7.1f} MiB ({r['peak_over_dense_fp32']:.2f}x dense fp32), "
              f"resident after {r['resident_after_mib']:7.1f} MiB ({r['resident_touched_mib']:.1f} MiB once every "
              f"tensor is read), {r['seconds']:.1f} s, {r['vq_linears']} VQLinear")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
