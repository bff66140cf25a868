"""Compress a causal LM block by block (GPTQ order), with a checkpoint after every block.

::

    calibration windows -> inputs of block 0
    for each decoder block i:
        forward the block's inputs once, accumulating H = 2XᵀX for every Linear (shared by
        Linears reading the same tensor, e.g. q/k/v)
        quantize each Linear with the solver (rtn | gptq | gptvq)
        forward the inputs again through the *quantized* block -> inputs of block i+1
        checkpoint: the block's stored tensors + the next inputs + state.json

A killed run restarted with ``resume=True`` reloads the finished blocks and the saved inputs
and continues; every random choice is seeded per layer from ``(seed, block, layer)``, so the
result equals an uninterrupted run bit for bit.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vq.weights.format import QuantizedWeight, bits_report, read_json, read_tensors, write_json, write_tensors
from vq.weights.gptq import GPTQConfig, gptq_quantize
from vq.weights.gptvq import GPTVQConfig, gptvq_quantize
from vq.weights.hessian import Hessian
from vq.weights.hf import block_linears, decoder_blocks, linear_shape, linear_weight, other_matrices, set_module
from vq.weights.rtn import RTNConfig, rtn_quantize

__all__ = [
    "METHODS",
    "DEFAULT_SKIP",
    "CompressConfig",
    "CompressedModel",
    "compress",
    "method_config",
    "block_inputs",
    "block_hessians",
    "run_block",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Method:
    config_cls: type
    solve: Callable[[Tensor, Tensor | None, Any, int], QuantizedWeight]  # (W, H, config, seed)
    needs_hessian: bool = True


#: method name -> (config dataclass, solver(W, H, config, seed), whether it uses calibration)
METHODS: dict[str, _Method] = {
    "rtn": _Method(RTNConfig, lambda W, H, c, seed: rtn_quantize(W, c), needs_hessian=False),
    "gptq": _Method(GPTQConfig, lambda W, H, c, seed: gptq_quantize(W, H, c)),
    "gptvq": _Method(GPTVQConfig, lambda W, H, c, seed: gptvq_quantize(W, H, c, seed=seed)),
}

#: routers and gates (see CompressConfig.skip)
DEFAULT_SKIP: tuple[str, ...] = ("*.gate", "*_gate")

_DENSE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def method_config(method: str, bits: int, **overrides: Any):
    """The default solver config of ``method`` for a target of ``bits`` bits per weight.

    rtn / gptq: ``bits``-bit grid per group of 128 columns. gptvq (8-bit codebooks, fp16 row
    scales): 2 -> d=4, K=256, 32768 weights per codebook (2 code bits per weight + ~0.26 side
    information); 3 -> d=3, K=512, 65536 per codebook (+~0.22; needs in_features divisible by 3,
    else use dim=2, index_bits=6); 4 -> d=2, K=256, 32768 per codebook. The presets were chosen
    by the proxy loss on SmolLM2-135M layers (docs/results.md).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if method in ("rtn", "gptq"):
        return METHODS[method].config_cls(bits=bits, **overrides)
    presets = {2: dict(dim=4, index_bits=8, weights_per_codebook=32768),
               3: dict(dim=3, index_bits=9, weights_per_codebook=65536),
               4: dict(dim=2, index_bits=8, weights_per_codebook=32768)}
    if bits not in presets:
        raise ValueError(f"gptvq has presets for 2, 3 and 4 bits, got {bits}; set dim/index_bits explicitly")
    return GPTVQConfig(**{**presets[bits], **overrides})


def _method_of(solver: Any) -> str:
    for name, m in METHODS.items():
        if type(solver) is m.config_cls:
            return name
    raise TypeError(f"unknown solver config type {type(solver).__name__}; known: "
                    f"{[m.config_cls.__name__ for m in METHODS.values()]}")


@dataclass(frozen=True)
class CompressConfig:
    """What to run: ``solver`` (RTNConfig | GPTQConfig | GPTVQConfig) plus pipeline settings.

    batch_size: calibration windows per block forward. seed: base seed of every random choice.
    dense_dtype: storage dtype of the tensors left dense (embeddings, norms, biases); the
    compressed model in memory uses the same rounded values so it equals the one on disk.
    skip: fnmatch patterns on a layer's name within its block (``mlp.gate``, ``self_attn.q_proj``);
    a matching layer stays dense. The default names routers and gates (Mixtral's ``mlp.gate``,
    Qwen2-MoE's ``mlp.gate`` and ``mlp.shared_expert_gate``; ``gate_proj`` does not match).
    min_out_features: a layer with fewer outputs stays dense too (a 1-output gate or an 8-expert
    router: tiny, and its few outputs steer the whole block).
    """

    solver: Any = field(default_factory=lambda: method_config("gptvq", 2))
    batch_size: int = 8
    seed: int = 0
    dense_dtype: str = "float16"
    skip: tuple[str, ...] = DEFAULT_SKIP
    min_out_features: int = 16

    def __post_init__(self) -> None:
        _method_of(self.solver)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dense_dtype not in _DENSE_DTYPES:
            raise ValueError(f"dense_dtype must be one of {sorted(_DENSE_DTYPES)}, got {self.dense_dtype!r}")
        if isinstance(self.skip, str) or not all(isinstance(p, str) and p for p in self.skip):
            raise ValueError(f"skip must be a sequence of non-empty fnmatch patterns, got {self.skip!r}")
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.min_out_features < 0:
            raise ValueError(f"min_out_features must be >= 0, got {self.min_out_features}")

    def skip_reason(self, name: str, out_features: int) -> str | None:
        """Why the layer ``name`` (within its block) stays dense, or None."""
        for pattern in self.skip:
            if fnmatch.fnmatchcase(name, pattern):
                return f"skip pattern {pattern!r}"
        if out_features < self.min_out_features:
            return f"{out_features} outputs < min_out_features={self.min_out_features}"
        return None

    @property
    def method(self) -> str:
        return _method_of(self.solver)

    @property
    def torch_dense_dtype(self) -> torch.dtype:
        return _DENSE_DTYPES[self.dense_dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "solver": self.solver.to_dict(), "batch_size": self.batch_size,
                "seed": self.seed, "dense_dtype": self.dense_dtype, "skip": list(self.skip),
                "min_out_features": self.min_out_features}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressConfig":
        d = dict(d)
        method = d.pop("method", None)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} in config; known: {sorted(METHODS)}")
        solver = METHODS[method].config_cls.from_dict(d.pop("solver", {}))
        if "skip" in d:
            d["skip"] = tuple(d["skip"])
        return cls(solver=solver, **d)


@dataclass
class CompressedModel:
    """Result of :func:`compress`: the model (compressed Linears are ``VQLinear``), each layer's
    stored form, the config and a report (bits per layer and in total, proxy losses, time)."""

    model: nn.Module
    layers: dict[str, QuantizedWeight]
    config: CompressConfig
    report: dict[str, Any]


# -- calibration capture -----------------------------------------------------------------------
class _Caught(Exception):
    pass


@torch.no_grad()
def block_inputs(model: nn.Module, calib: Tensor, batch_size: int) -> tuple[Tensor, dict[str, Any]]:
    """Inputs (n, L, hidden) of decoder block 0 for every window, and the block's other kwargs."""
    block0 = decoder_blocks(model)[0]
    xs: list[Tensor] = []
    kwargs: dict[str, Any] = {}

    def catch(mod, args, kw):
        hidden = args[0] if args else kw["hidden_states"]
        xs.append(hidden.detach().float().clone())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k not in ("hidden_states", "cache", "past_key_values", "past_key_value", "use_cache")})
        raise _Caught

    handle = block0.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for s in range(0, len(calib), batch_size):
            try:
                model(input_ids=calib[s : s + batch_size], use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return torch.cat(xs), kwargs


def run_block(block: nn.Module, x: Tensor, kwargs: dict[str, Any], batch_size: int, what: str) -> Tensor:
    """The block's outputs (n, L, hidden) float32 for inputs x (fed in the block's own dtype, e.g.
    bfloat16), in batches; NaN/Inf raise."""
    dtype = next((p.dtype for p in block.parameters() if p.dtype.is_floating_point), x.dtype)
    outs = []
    for s in range(0, len(x), batch_size):
        y = block(x[s : s + batch_size].to(dtype), **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        outs.append(y.float())
    y = torch.cat(outs)
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"activations after {what} contain NaN or Inf")
    return y


@torch.no_grad()
def block_hessians(block: nn.Module, linears: dict[str, nn.Module], x: Tensor, kwargs: dict[str, Any],
                    batch_size: int, prefix: str) -> dict[str, Hessian]:
    """One forward of the block's inputs; Linears fed the very same tensor share one Hessian."""
    hess: dict[str, Hessian] = {}
    last: dict[str, Any] = {"x": None, "h": None}

    def hook_for(name: str, mod: nn.Module):
        def hook(_m, args, _out):
            inp = args[0]
            if inp is last["x"]:  # same input tensor as the previous Linear: share its Hessian
                hess[name] = last["h"]
                return
            h = hess.get(name)
            if h is None:
                h = hess[name] = Hessian(linear_shape(mod)[1], name=f"{prefix}.{name}")
            h.add_batch(inp)
            last["x"], last["h"] = inp, h

        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in linears.items()]
    try:
        run_block(block, x, kwargs, batch_size, prefix)
    finally:
        for h in handles:
            h.remove()
        last.clear()
    return hess


# -- checkpoints -------------------------------------------------------------------------------
def _fingerprint(model: nn.Module, calib: Tensor, config: CompressConfig) -> str:
    """sha256 over the config, the calibration tokens and every parameter's bytes."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(calib.contiguous().numpy().tobytes())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_block(ckpt: Path, i: int, layers: dict[str, QuantizedWeight], x_next: Tensor, state: dict[str, Any]) -> None:
    tensors = {f"{name}.{k}": v for name, qw in layers.items() for k, v in qw.tensors.items()}
    meta = {"layers": json.dumps({name: qw.meta() for name, qw in layers.items()})}
    write_tensors(ckpt / f"block_{i:04d}.safetensors", tensors, meta)
    write_tensors(ckpt / f"acts_{i + 1:04d}.safetensors", {"x": x_next})
    write_json(ckpt / "state.json", state)
    old = ckpt / f"acts_{i:04d}.safetensors"
    if old.exists():
        old.unlink()


def _load_block(ckpt: Path, i: int) -> dict[str, QuantizedWeight]:
    tensors, meta = read_tensors(ckpt / f"block_{i:04d}.safetensors")
    try:
        metas = json.loads(meta["layers"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint block {i} has no valid layer metadata: {e}") from e
    out = {}
    for name, m in metas.items():
        own = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        out[name] = QuantizedWeight.from_stored(m, own, name=name)
    return out


# -- main entry ----------------------------------------------------------------------------------
def _layer_seed(seed: int, block: int, j: int) -> int:
    return (seed * 1_000_003 + block * 1_009 + j) % (2**31)


def layer_solver(solver: Any, in_features: int) -> tuple[Any, str | None]:
    """The solver config for a layer of ``in_features`` inputs, and why it differs from ``solver``.

    A vector length ``dim`` that does not divide ``in_features`` falls back to the largest
    ``d' <= dim`` that does, with ``index_bits`` scaled by ``d'/dim`` (rounded, >= 1) so the code
    bits per weight stay about the same (d=3, 9 bits -> d=2, 6 bits; d=4, 8 bits -> d=3, 6 bits).
    rtn / gptq take any width (the last group is shorter) and are returned as they are.
    """
    dim = getattr(solver, "dim", None)
    if dim is None or in_features % dim == 0:
        return solver, None
    d = max(c for c in range(1, dim + 1) if in_features % c == 0)
    index_bits = max(1, round(solver.index_bits * d / dim))
    return (dataclasses.replace(solver, dim=d, index_bits=index_bits),
            f"in_features={in_features} is not a multiple of dim={dim}: dim={d}, index_bits={index_bits}")


@dataclass
class _Plan:
    """What happens to each Linear-like layer of a block: its solver config, or None (dense)."""

    linears: dict[str, nn.Module]
    solvers: dict[str, Any]
    notes: dict[str, str]  # layer name -> why it stays dense / why its solver config differs


def _check_model(model: nn.Module, config: CompressConfig) -> tuple[nn.ModuleList, dict[int, _Plan]]:
    """Every check that needs no calibration, before any heavy work."""
    blocks = decoder_blocks(model)
    plans: dict[int, _Plan] = {}
    for i, block in enumerate(blocks):
        linears = block_linears(block)
        if not linears:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear layers in its decoder blocks; nothing to compress "
                f"(block {i} is {type(block).__name__})")
        solvers, notes = {}, {}
        for name, mod in linears.items():
            out_f, in_f = linear_shape(mod)
            if not bool(torch.isfinite(mod.weight).all()):
                raise ValueError(f"weights of layer {i}.{name} contain NaN or Inf")
            reason = config.skip_reason(name, out_f)
            if reason is not None:
                notes[name] = f"dense: {reason}"
                continue
            solvers[name], note = layer_solver(config.solver, in_f)
            if note is not None:
                notes[name] = note
        if not solvers:
            raise ValueError(f"every Linear of block {i} ({type(block).__name__}) is skipped; nothing to compress")
        plans[i] = _Plan(linears, solvers, notes)
    return blocks, plans


@torch.no_grad()
def compress(
    model: nn.Module,
    config: CompressConfig | Any,
    calib: Tensor,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> CompressedModel:
    """Compress every Linear of ``model``'s decoder blocks in place and return the result.

    Args:
        model: a transformers causal LM (float32, CPU or one device), modified in place.
        config: a :class:`CompressConfig`, or a bare solver config (``GPTVQConfig(...)`` ...).
        calib: (n, seq_len) int64 calibration token windows.
        checkpoint_dir: where per-block checkpoints go (None: no checkpoints).
        resume: continue from ``checkpoint_dir`` (it must come from the same model, calibration
            and config; otherwise a ValueError says so).
    """
    if not isinstance(config, CompressConfig):
        config = CompressConfig(solver=config)
    if not isinstance(calib, Tensor) or calib.dim() != 2 or calib.dtype != torch.long or calib.numel() == 0:
        raise ValueError("calib must be a non-empty (n, seq_len) int64 tensor of token windows")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    blocks, plans = _check_model(model, config)
    method = METHODS[config.method]
    t0 = time.perf_counter()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = _fingerprint(model, calib, config) if ckpt is not None else ""
    layers: dict[str, QuantizedWeight] = {}
    start = 0
    x: Tensor | None = None
    if ckpt is not None and resume and (ckpt / "state.json").exists():
        state = read_json(ckpt / "state.json")
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"checkpoint in {ckpt} was made with a different model, calibration text or config; "
                "start without --resume or use the same settings"
            )
        start = int(state["blocks_done"])
        for i in range(start):
            for name, qw in _load_block(ckpt, i).items():
                layers[f"{i}.{name}"] = qw
                _set_dense(blocks[i], name, qw)
        x = read_tensors(ckpt / f"acts_{start:04d}.safetensors")[0]["x"] if start < len(blocks) else None
        log.info("resuming from %s: %d of %d blocks done", ckpt, start, len(blocks))
    elif ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        for pattern in ("state.json*", "block_*.safetensors*", "acts_*.safetensors*"):  # a fresh start
            for f in ckpt.glob(pattern):
                f.unlink()
    device = next(model.parameters()).device
    x0, kwargs = block_inputs(model, calib.to(device), config.batch_size)
    if x is None:
        x = x0
    del x0
    x = x.to(device)
    prefix = _blocks_prefix(model, blocks)
    bar = tqdm(range(start, len(blocks)), desc=f"{config.method} blocks", unit="block", disable=not progress,
               initial=start, total=len(blocks))
    for i in bar:
        block = blocks[i]
        plan = plans[i]
        todo = {n: m for n, m in plan.linears.items() if n in plan.solvers}
        hess = (block_hessians(block, todo, x, kwargs, config.batch_size, f"{prefix}.{i}")
                if method.needs_hessian else {})
        done: dict[str, QuantizedWeight] = {}
        for j, (name, mod) in enumerate(tqdm(plan.linears.items(), desc=f"block {i}", unit="layer",
                                              leave=False, disable=not progress)):
            if name not in plan.solvers:
                continue  # stays dense; j still counts it, so the other layers' seeds do not move
            H = hess[name].H.cpu() if name in hess else None
            W = linear_weight(mod).float().cpu()  # (out, in), upcast one layer at a time
            qw = method.solve(W, H, plan.solvers[name], _layer_seed(config.seed, i, j))
            done[name] = qw
            _set_dense(block, name, qw)
        del hess
        if method.needs_hessian:  # the next block's inputs come from this quantized block
            x = run_block(block, x, kwargs, config.batch_size, f"quantized block {i}")
        for name, qw in done.items():
            layers[f"{i}.{name}"] = qw
        if ckpt is not None:
            _save_block(ckpt, i, done, x, {"fingerprint": fingerprint, "blocks_done": i + 1,
                                           "n_blocks": len(blocks), "config": config.to_dict()})
    _round_dense(model, config.torch_dense_dtype)
    for i, block in enumerate(blocks):
        for name in plans[i].solvers:
            mod = plans[i].linears[name]
            qw = layers[f"{i}.{name}"]
            set_module(block, name, qw.to_module(mod.bias).to(device))
    full = {f"{prefix}.{k}": v for k, v in layers.items()}
    report = bits_report(full)
    # layers left dense or given another solver config, and matrices that are no Linear (3-D experts)
    report["notes"] = {f"{prefix}.{i}.{n}": why for i, p in plans.items() for n, why in p.notes.items()}
    report["dense_matrices"] = [f"{prefix}.{i}.{n}" for i, b in enumerate(blocks) for n in other_matrices(b)]
    if report["dense_matrices"]:
        log.warning("%d matrices are no Linear and stay dense (e.g. %s)", len(report["dense_matrices"]),
                    report["dense_matrices"][0])
    report["seconds"] = time.perf_counter() - t0
    report["config"] = config.to_dict()
    from vq.weights.hf_quantizer import attach  # noqa: PLC0415 — transformers is imported by then

    attach(model)  # model.save_pretrained(DIR) then writes what from_pretrained (after import vq) reads
    return CompressedModel(model, full, config, report)


def _blocks_prefix(model: nn.Module, blocks: nn.ModuleList) -> str:
    for name, mod in model.named_modules():
        if mod is blocks:
            return name
    raise ValueError("decoder blocks are not a submodule of the model")


def _set_dense(block: nn.Module, name: str, qw: QuantizedWeight) -> None:
    """Put the decoded weight into the (still dense) Linear, for the following forwards."""
    weight = linear_weight(block.get_submodule(name))  # a transposed view for Conv1D
    weight.copy_(qw.dense().to(weight.dtype))


def _round_dense(model: nn.Module, dtype: torch.dtype) -> None:
    for p in model.parameters():
        p.copy_(p.to(dtype).to(p.dtype))

