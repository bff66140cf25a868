"""End-to-end CPU generation speed: a compressed model (every quantized Linear a ``VQLinear``)
against the same model with each ``VQLinear`` replaced by a float32 ``nn.Linear`` holding its
decoded weight (same architecture, same function, dense fp32 weights), in the same run.

    .venv/bin/python bench/e2e_cpu.py COMPRESSED_DIR [--tokens 32] [--rounds 3] [--threads N]

``COMPRESSED_DIR`` is what ``vq compress`` / ``vq.weights.format.save`` wrote (loaded with
``vq.load``). Greedy decoding of ``--tokens`` new tokens from a fixed prompt, rounds interleaved;
tokens/s is new tokens / median wall time. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("bench.e2e_cpu")


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose VQLinear layers are fp32 nn.Linear with the decoded weights."""
    from vq.weights.nn import VQLinear

    dense = copy.deepcopy(model)
    for name, mod in list(dense.named_modules()):
        if isinstance(mod, VQLinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(mod.to_dense().float())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias.float())
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, child, lin)
    return dense


def _generate(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("compressed", type=Path)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (fixed ids; speed only)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)

    import vq
    from vq.weights.nn import VQLinear

    model = vq.load(a.compressed).eval()
    n_vq = sum(isinstance(m, VQLinear) for m in model.modules())
    dense = densify(model).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    out_vq, out_dense = _generate(model, ids, a.tokens), _generate(dense, ids, a.tokens)  # warm-up
    t_vq, t_dense = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        _generate(model, ids, a.tokens)
        t_vq.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _generate(dense, ids, a.tokens)
        t_dense.append(time.perf_counter() - t0)
    tps_vq, tps_dense = a.tokens / statistics.median(t_vq), a.tokens / statistics.median(t_dense)
    same = float((out_vq[0, a.prompt_len:] == out_dense[0, a.prompt_len:]).float().mean())
    log.info("%d VQLinear layers: %.1f tok/s vs fp32 %.1f tok/s (%.2fx); same greedy tokens: %.0f%%",
             n_vq, tps_vq, tps_dense, tps_vq / tps_dense, 100 * same)
    print(json.dumps(dict(
        compressed=str(a.compressed), vq_layers=n_vq, tokens=a.tokens, threads=a.threads,
        vq_tok_s=tps_vq, fp32_tok_s=tps_dense, speedup=tps_vq / tps_dense, same_tokens_frac=same,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )))


if __name__ == "__main__":
    main()
