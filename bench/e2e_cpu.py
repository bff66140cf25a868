"""End-to-end CPU generation speed: a compressed model (every quantized Linear a ``VQLinear``)
against the same model with each ``VQLinear`` replaced by a float32 ``nn.Linear`` holding its
decoded weight (same architecture, same function, dense fp32 weights), in the same run.

    .venv/bin/python bench/e2e_cpu.py COMPRESSED_DIR [--tokens 32] [--rounds 3] [--threads N]
    .venv/bin/python bench/e2e_cpu.py --quantize smollm2 [--layout 2x8]

``COMPRESSED_DIR`` is what ``vq compress`` / ``vq.weights.format.save`` wrote (loaded with
``vq.load``). ``--quantize MODEL`` instead loads MODEL (``vq.weights.hf.load_model``) and
replaces every Linear of its decoder blocks by ``VQLinear.from_dense`` (plain k-means, a
speed stand-in: the weights' quality does not change the speed). Greedy decoding of ``--tokens`` new tokens from a fixed prompt, rounds interleaved;
tokens/s is new tokens / median wall time. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
from pathlib import Path

import torch
from torch import nn

from _report import print_result
from _timing import race

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


def quantize_in_memory(model_spec: str, layout: str, niter: int) -> nn.Module:
    """MODEL with every Linear of its decoder blocks replaced by a k-means VQLinear."""
    from vq.weights.hf import block_linears, decoder_blocks, load_model, set_module
    from vq.weights.nn import VQLinear

    m, k, d = {"2x8": (2, 256, 8), "1x8d4": (1, 256, 4)}[layout]
    model = load_model(model_spec)
    for i, block in enumerate(decoder_blocks(model)):
        for name, lin in block_linears(block).items():
            set_module(block, name, VQLinear.from_dense(lin, d=d, K=k, M=m, niter=niter))
        log.info("quantized block %d", i)
    return model


def _generate(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("compressed", type=Path, nargs="?", help="compressed directory (vq.load)")
    p.add_argument("--quantize", metavar="MODEL", help="quantize MODEL in memory instead (e.g. smollm2)")
    p.add_argument("--layout", default="2x8", choices=["2x8", "1x8d4"], help="with --quantize")
    p.add_argument("--niter", type=int, default=4, help="k-means iterations with --quantize")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (fixed ids; speed only)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)

    import vq
    from vq.weights.nn import VQLinear

    if (a.compressed is None) == (a.quantize is None):
        p.error("give a compressed directory or --quantize MODEL")
    model = (vq.load(a.compressed) if a.quantize is None else quantize_in_memory(a.quantize, a.layout, a.niter)).eval()
    n_vq = sum(isinstance(m, VQLinear) for m in model.modules())
    dense = densify(model).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    out_vq, out_dense = _generate(model, ids, a.tokens), _generate(dense, ids, a.tokens)  # warm-up
    t_vq, t_dense = race(lambda: _generate(model, ids, a.tokens), lambda: _generate(dense, ids, a.tokens),
                         a.rounds, warmup=0)
    tps_vq, tps_dense = a.tokens / statistics.median(t_vq), a.tokens / statistics.median(t_dense)
    same = float((out_vq[0, a.prompt_len:] == out_dense[0, a.prompt_len:]).float().mean())
    log.info("%d VQLinear layers: %.1f tok/s vs fp32 %.1f tok/s (%.2fx); same greedy tokens: %.0f%%",
             n_vq, tps_vq, tps_dense, tps_vq / tps_dense, 100 * same)
    print_result(dict(
        compressed=str(a.compressed or f"{a.quantize} ({a.layout}, in-memory k-means)"), vq_layers=n_vq, tokens=a.tokens, threads=a.threads,
        vq_tok_s=tps_vq, fp32_tok_s=tps_dense, speedup=tps_vq / tps_dense, same_tokens_frac=same,
    ))


if __name__ == "__main__":
    main()
