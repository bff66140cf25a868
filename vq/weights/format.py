"""What a compressed Linear stores, how many bits that is, and the model directory on disk.

A compressed weight ``W (out, in)`` is a :class:`QuantizedWeight`: the exact tensors written to
disk (bit-packed codes and the smallest form of the codebooks) plus its layout. Everything
downstream — the dense weight used while compressing, the ``VQLinear`` of the in-memory model
and the one rebuilt by :func:`load` — is decoded from those tensors by one function, so the
model in memory and the model read back from disk compute exactly the same thing.

Two kinds share the docs/formats.md VQ layout:

``vq``       ``codes`` int32 packed (out, words) · ``scales`` fp16 (out,) · the codebooks, either
             ``codebooks`` fp16 (R_t, C_t, 1, K, d), or 8-bit: ``codebooks_q`` uint8 (same shape)
             with ``codebook_scale``/``codebook_min`` fp16 (R_t, C_t, 1); value = min + scale·q.
``uniform``  scalar per-group quantization as VQ with d = 1: ``codes`` int32 packed,
             ``group_scale`` fp16 (out, G) and ``group_zero`` uint8 (out, G); value =
             scale·(q − zero). Decoded as a (out, G, 1, 2^bits, 1) codebook with tile_rows = 1,
             tile_groups = group_size.

Bit accounting (:meth:`QuantizedWeight.nbits`): the bytes of every tensor the layer stores
(packed codes incl. the zero padding of each row's last word, codebooks, their 8-bit scale/min,
row scales, group scales/zeros, bias) × 8. Bits per weight = that / (out·in). The whole-model
figure sums over the quantized Linears; headers, JSON and the layers kept dense (embeddings,
norms) are reported separately as the file size.

The model-directory layout is documented in docs/formats.md ("Compressed model directory").
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vq.codebook._integrity import read_safetensors, write_safetensors
from vq_kernels.layout import VQLayout
from vq_kernels.reference import dequantize

from vq import outputs
from vq.weights import hf
from vq.outputs import OutputKind

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "CONFIG_FILE",
    "QuantizedWeight",
    "quantize_codebook_8bit",
    "write_tensors",
    "read_tensors",
    "write_json",
    "read_json",
    "MODEL_OUTPUT",
    "replace_dir",
    "bits_report",
    "save",
    "load",
    "is_compressed_dir",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "vq_config.json"

_KINDS = ("vq", "uniform")
# the tensors each kind stores: name -> dtype (shapes: ``QuantizedWeight.expected_tensors``)
_VQ_TENSORS = {"codes": torch.int32, "scales": torch.float16}
_VQ_CB16 = {"codebooks": torch.float16}
_VQ_CB8 = {"codebooks_q": torch.uint8, "codebook_scale": torch.float16, "codebook_min": torch.float16}
_UNIFORM_TENSORS = {"codes": torch.int32, "group_scale": torch.float16, "group_zero": torch.uint8}


def quantize_codebook_8bit(cb: Tensor) -> dict[str, Tensor]:
    """Asymmetric 8-bit quantization of codebooks (R_t, C_t, M, K, d), one (scale, min) per codebook.

    Returns ``codebooks_q`` uint8, ``codebook_scale`` / ``codebook_min`` fp16 (R_t, C_t, M). The
    scale is chosen after rounding ``min`` to fp16 so every entry stays inside the 0..255 grid.
    """
    flat = cb.float().flatten(-2)  # (R_t, C_t, M, K*d)
    lo = flat.amin(-1).to(torch.float16)
    hi = flat.amax(-1)
    scale = ((hi - lo.float()) / 255.0).to(torch.float16)
    # fp16 rounding may shrink the scale: bump it until (hi - lo) / scale <= 255
    tiny = torch.finfo(torch.float16).tiny
    scale = torch.where(scale.float() * 255.0 < (hi - lo.float()), torch.nextafter(scale, scale + 1), scale)
    scale = torch.where(scale.float() > 0, scale, torch.full_like(scale, tiny))
    q = torch.round((flat - lo.float()[..., None]) / scale.float()[..., None]).clamp_(0, 255)
    return {
        "codebooks_q": q.to(torch.uint8).reshape(cb.shape),
        "codebook_scale": scale,
        "codebook_min": lo,
    }


#: the layout fields each layer's JSON entry stores (M is always 1 in a stored layer)
_META_FIELDS = ("out_features", "in_features", "d", "K", "bits", "tile_rows", "tile_groups")


@dataclass
class QuantizedWeight:
    """The stored form of one compressed weight ``(out_features, in_features)``.

    ``layout`` is the one description of the layer (:class:`vq_kernels.layout.VQLayout`, M = 1),
    the very object the ``VQLinear`` of :meth:`to_module` computes with; every size here derives
    from it. ``tensors`` holds exactly what is written to disk (see the module docstring).
    Tensors are checked where they enter, :meth:`from_stored`; the constructors for a solver's
    own output build them to the layout and do not re-check.
    """

    kind: str
    layout: VQLayout
    tensors: dict[str, Tensor] = field(repr=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_vq(
        cls, codes: Tensor, codebooks: Tensor, scales: Tensor, *, tile_rows: int, tile_groups: int,
        codebook_bits: int | None = 8,
    ) -> "QuantizedWeight":
        """codes (out, n_groups) int64 in [0, K); codebooks (R_t, C_t, K, d); scales (out,).

        ``codebook_bits`` 8 stores 8-bit codebooks, ``None`` fp16 ones.
        """
        out, n_groups = codes.shape
        K, d = codebooks.shape[2:]
        lay = VQLayout.make(out, n_groups * d, d=d, K=K, tile_rows=tile_rows, tile_groups=tile_groups)
        cb = codebooks[:, :, None]  # (R_t, C_t, 1, K, d)
        tensors = {"codes": lay.pack(codes[:, :, None]), "scales": scales.to(torch.float16).contiguous()}
        if codebook_bits is None:
            tensors["codebooks"] = cb.to(torch.float16).contiguous()
        elif codebook_bits == 8:
            tensors.update(quantize_codebook_8bit(cb))
        else:
            raise ValueError(f"codebook_bits must be 8 or None (fp16), got {codebook_bits}")
        return cls("vq", lay, tensors)

    @classmethod
    def from_uniform(cls, codes: Tensor, scale: Tensor, zero: Tensor, *, bits: int, group_size: int) -> "QuantizedWeight":
        """codes (out, in) int64 in [0, 2^bits); scale (out, G) float; zero (out, G) ints in [0, 255]."""
        out, inp = codes.shape
        lay = VQLayout.make(out, inp, d=1, K=1 << bits, bits=bits, tile_rows=1, tile_groups=group_size)
        tensors = {
            "codes": lay.pack(codes[:, :, None]),
            "group_scale": scale.to(torch.float16).contiguous(),
            "group_zero": zero.to(torch.uint8).contiguous(),
        }
        return cls("uniform", lay, tensors)

    @classmethod
    def from_stored(cls, meta: dict[str, Any], tensors: dict[str, Tensor], name: str = "layer") -> "QuantizedWeight":
        """Rebuild from the JSON entry and the tensors read from disk: the one place a stored layer
        is checked (layout fields, every tensor's shape / dtype / finiteness, the code range)."""
        missing = [k for k in ("kind", *_META_FIELDS) if k not in meta]
        if missing:
            raise ValueError(f"{name}: config entry lacks {missing}")
        if meta["kind"] not in _KINDS:
            raise ValueError(f"{name}: unknown layer kind {meta['kind']!r}; known: {_KINDS}")
        try:
            lay = VQLayout(**{k: meta[k] for k in _META_FIELDS}, M=1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: config/tensor mismatch: bad layout: {e}") from e
        qw = cls(meta["kind"], lay, tensors)
        want = qw.expected_tensors()
        if set(tensors) != set(want):
            raise ValueError(
                f"{name}: config/tensor mismatch: stored tensors {sorted(tensors)}, layout expects {sorted(want)}"
            )
        for t_name, (shape, dtype) in want.items():
            t = tensors[t_name]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(
                    f"{name}: config/tensor mismatch: {t_name} is {tuple(t.shape)} {t.dtype}, "
                    f"the layout expects {shape} {dtype}"
                )
            if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: {t_name} contains NaN or Inf")
        try:
            lay.check_packed_codes(tensors["codes"])
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return qw

    # -- layout ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The JSON entry for this layer."""
        cfg = self.layout.config()
        return {"kind": self.kind, **{k: cfg[k] for k in _META_FIELDS}, "nbits": self.nbits(),
                "bits_per_weight": self.bits_per_weight()}

    def expected_tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) this layout must store."""
        lay = self.layout
        words = (lay.out_features, lay.words_per_row)
        if self.kind == "uniform":
            g = (lay.out_features, lay.group_tiles)
            return {"codes": (words, torch.int32), "group_scale": (g, torch.float16), "group_zero": (g, torch.uint8)}
        cb = lay.codebook_shape  # (R_t, C_t, 1, K, d)
        want = {"codes": (words, torch.int32), "scales": ((lay.out_features,), torch.float16)}
        if "codebooks" in self.tensors:
            want["codebooks"] = (cb, torch.float16)
        else:
            tile = cb[:3]
            want.update({"codebooks_q": (cb, torch.uint8), "codebook_scale": (tile, torch.float16),
                         "codebook_min": (tile, torch.float16)})
        return want

    # -- decode ------------------------------------------------------------------------------
    def codes(self) -> Tensor:
        """(out, n_groups, 1) int64 logical codes."""
        return self.layout.unpack(self.tensors["codes"])

    def codebooks(self) -> Tensor:
        """(R_t, C_t, 1, K, d) float32 decoded codebooks (the values the layer computes with)."""
        t = self.tensors
        if self.kind == "uniform":
            levels = torch.arange(self.layout.K, dtype=torch.float32)  # (K,)
            cb = t["group_scale"].float()[..., None] * (levels - t["group_zero"].float()[..., None])  # (out, G, K)
            return cb[:, :, None, :, None]  # (out, G, 1, K, 1)
        if "codebooks" in t:
            return t["codebooks"].float()
        return t["codebook_min"].float()[..., None, None] + t["codebook_scale"].float()[..., None, None] * t[
            "codebooks_q"
        ].float()

    def scales(self) -> Tensor:
        """(out,) float32 row scales."""
        if self.kind == "uniform":
            return torch.ones(self.layout.out_features)
        return self.tensors["scales"].float()

    def dense(self) -> Tensor:
        """(out, in) float32 dense weight."""
        lay = self.layout
        return dequantize(self.codes(), self.codebooks(), self.scales(), lay.tile_rows, lay.tile_groups)

    def to_module(self, bias: Tensor | None = None) -> nn.Module:
        """A :class:`~vq.weights.nn.VQLinear` computing with this weight: the same layout, the packed
        codes as stored (no unpack / repack), the decoded float32 codebooks and scales."""
        from vq.weights.nn import VQLinear

        return VQLinear.from_packed(self.layout, self.tensors["codes"].clone(), self.codebooks(), self.scales(),
                                    None if bias is None else bias.detach().float().clone())

    # -- accounting ----------------------------------------------------------------------------
    def nbits(self) -> int:
        """Bits this weight occupies on disk: every stored tensor's bytes × 8."""
        return sum(t.numel() * t.element_size() * 8 for t in self.tensors.values())

    def bits_per_weight(self) -> float:
        return self.nbits() / (self.layout.out_features * self.layout.in_features)


# -- files -------------------------------------------------------------------------------------
def write_tensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors write to ``<path>.tmp`` then rename (a crash never leaves a half file at ``path``),
    with a SHA-256 per tensor in the metadata (docs/formats.md, "Checksums")."""
    write_safetensors(path, tensors, metadata)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; a missing, truncated or corrupted file (including a tensor whose
    checksum does not match) raises a clear error naming the file and the tensor."""
    return read_safetensors(path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON write to ``<path>.tmp`` then rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupted or truncated (not valid JSON): {e}") from e


#: the marker kind of a compressed model directory (vq.outputs): what save writes, by name
MODEL_OUTPUT = OutputKind(
    kind="compressed-model", command="vq compress",
    files=(MODEL_FILE, CONFIG_FILE, "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
           "vocab.json", "merges.txt", "added_tokens.json", "chat_template.*"),
)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished compressed model directory ``tmp`` to ``final`` (see :func:`vq.outputs.replace_dir`:
    an existing ``final`` is replaced only when it is vq's output, and only vq's files in it go)."""
    outputs.replace_dir(tmp, final, MODEL_OUTPUT)


# -- accounting over a model -------------------------------------------------------------------
def bits_report(layers: dict[str, QuantizedWeight]) -> dict[str, Any]:
    """Per-layer and whole-model bits: ``{"layers": {name: {nbits, weights, bits_per_weight}},
    "nbits", "weights", "bits_per_weight"}`` — what the stored tensors occupy (see module doc)."""
    per = {
        n: {"nbits": q.nbits(), "weights": q.layout.out_features * q.layout.in_features,
            "bits_per_weight": q.bits_per_weight()}
        for n, q in layers.items()
    }
    nbits = sum(v["nbits"] for v in per.values())
    weights = sum(v["weights"] for v in per.values())
    return {"layers": per, "nbits": nbits, "weights": weights, "bits_per_weight": nbits / max(weights, 1)}


# -- the model directory -------------------------------------------------------------------------
_HF_CODES = "weight"  # the packed codes' key suffix in model.safetensors (vq.weights.hf_quantizer.CODES_KEY)


def _add_quantization_config(config_json: Path, layers: dict[str, QuantizedWeight], biases: set[str]) -> None:
    from vq.weights.hf_quantizer import quantization_config

    # dtype: what vq.load builds (the dense tensors are only stored in fp16), so from_pretrained's "auto" matches it
    write_json(config_json, {**read_json(config_json), "dtype": "float32",
                             "quantization_config": quantization_config(layers, biases)})


_LAYER_TENSORS = frozenset(set(_VQ_TENSORS) | set(_VQ_CB16) | set(_VQ_CB8) | set(_UNIFORM_TENSORS))


def save(
    out_dir: str | os.PathLike,
    model: nn.Module,
    layers: dict[str, QuantizedWeight],
    compress_config: dict[str, Any],
    *,
    tokenizer: Any = None,
    dense_dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a compressed model directory (docs/formats.md, "Compressed model directory").

    ``model`` is the compressed model (its quantized Linears are named in ``layers``); every other
    parameter / persistent buffer is stored in ``dense_dtype``. The directory is assembled in a hidden
    sibling temp directory and swapped into place only when complete (:func:`vq.outputs.staged_dir`):
    a non-empty ``out_dir`` is replaced only with ``overwrite`` and only when it is an earlier output
    of vq (``ValueError`` otherwise, before anything is written).
    """
    out = Path(out_dir)
    with outputs.staged_dir(out, MODEL_OUTPUT, overwrite=overwrite) as tmp:
        _write_model_dir(tmp, model, layers, compress_config, tokenizer, dense_dtype, extra)
    return out


def _write_model_dir(tmp: Path, model: nn.Module, layers: dict[str, QuantizedWeight], compress_config: dict[str, Any],
                     tokenizer: Any, dense_dtype: torch.dtype, extra: dict[str, Any] | None) -> None:
    tensors: dict[str, Tensor] = {}
    for name, qw in layers.items():
        for k, v in qw.tensors.items():
            tensors[f"{name}.{_HF_CODES if k == 'codes' else k}"] = v  # codes under .weight: hf_quantizer
    quantized_prefixes = tuple(n + "." for n in layers)
    dense: dict[str, list[Any]] = {}
    persistent = set(model.state_dict())
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in persistent]
    for name, t in named:
        if name.startswith(quantized_prefixes) and name.rsplit(".", 1)[-1] != "bias":
            continue  # the VQLinear's own buffers are written above
        if name.startswith(quantized_prefixes) or t.dtype.is_floating_point:
            t = t.to(dense_dtype)
        tensors[name] = t
        dense[name] = [list(t.shape), str(t.dtype).removeprefix("torch.")]
    write_tensors(tmp / MODEL_FILE, tensors, {"format": "vq", "format_version": str(FORMAT_VERSION)})
    report = bits_report(layers)
    write_json(tmp / CONFIG_FILE, {
        "format": "vq",
        "format_version": FORMAT_VERSION,
        "compress": compress_config,
        "layers": {name: qw.meta() for name, qw in layers.items()},
        "dense": dense,
        "bits": {k: report[k] for k in ("nbits", "weights", "bits_per_weight")},
        **(extra or {}),
    })
    model.config.save_pretrained(str(tmp))
    _add_quantization_config(tmp / "config.json", layers, {n for n in layers if n + ".bias" in tensors})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))


def is_compressed_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _check_model_shapes(path: Path, model: nn.Module, layers: dict[str, QuantizedWeight],
                        tensors: dict[str, Tensor]) -> None:
    """Every quantized layer and dense parameter of ``model`` (built from config.json on the meta
    device) has the shape of what is stored: a config.json claiming other sizes is refused before
    the real model is allocated."""
    for name, qw in layers.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"{path}: config/tensor mismatch: the model has no layer {name}") from e
        shape = (qw.layout.out_features, qw.layout.in_features)
        if not hf.is_linear(mod) or hf.linear_shape(mod) != shape:  # nn.Linear or GPT-2's Conv1D
            raise ValueError(f"{path}: config/tensor mismatch: config.json makes {name} {mod}, stored weight is {shape}")
        if (name + ".bias" in tensors) != (mod.bias is not None):
            raise ValueError(f"{path}: config/tensor mismatch: bias of {name}")
    quantized = tuple(n + "." for n in layers)
    for name, p in model.named_parameters():
        if name.startswith(quantized) or name not in tensors:
            continue  # quantized layers checked above; a missing tensor is reported after loading
        if tuple(p.shape) != tuple(tensors[name].shape):
            raise ValueError(f"{path}: config/tensor mismatch: config.json makes {name} {tuple(p.shape)}, "
                             f"stored tensor is {tuple(tensors[name].shape)}")


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the transformers model of a compressed directory; quantized layers are ``VQLinear``.

    Raises ``FileNotFoundError`` for a missing directory/file and ``ValueError`` (naming the
    problem) for a corrupted or truncated file or a config that does not match the tensors.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"compressed model directory {path} does not exist")
    cfg = read_json(path / CONFIG_FILE)
    if not isinstance(cfg, dict) or cfg.get("format") != "vq":
        raise ValueError(f"{path / CONFIG_FILE} is not a vq model config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {cfg.get('format_version')} is not supported (want {FORMAT_VERSION})")
    tensors, _ = read_tensors(path / MODEL_FILE)
    layer_meta = cfg.get("layers")
    if not isinstance(layer_meta, dict) or not layer_meta:
        raise ValueError(f"{path / CONFIG_FILE} lists no quantized layers")
    # validate every layer before building the model
    layers: dict[str, QuantizedWeight] = {}
    for name, meta in layer_meta.items():
        own = {k[len(name) + 1 :]: tensors.pop(k) for k in list(tensors)
               if k.startswith(name + ".") and k[len(name) + 1 :] in _LAYER_TENSORS}
        if name + "." + _HF_CODES in tensors:  # written since the transformers integration
            own["codes"] = tensors.pop(name + "." + _HF_CODES)
        layers[name] = QuantizedWeight.from_stored(meta, own, name=name)
    dense_meta = cfg.get("dense", {})
    if set(tensors) != set(dense_meta):
        extra = sorted(set(tensors) - set(dense_meta))[:5]
        missing = sorted(set(dense_meta) - set(tensors))[:5]
        raise ValueError(f"{path}: config/tensor mismatch: unexpected tensors {extra}, missing tensors {missing}")
    for name, (shape, _dtype) in dense_meta.items():
        if list(tensors[name].shape) != list(shape):
            raise ValueError(f"{path}: config/tensor mismatch: {name} is {tuple(tensors[name].shape)}, config says {tuple(shape)}")

    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):  # sizes from config.json, checked before anything is allocated
        _check_model_shapes(path, AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32), layers, tensors)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.tie_weights()
    for name, qw in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qw.to_module(tensors.pop(name + ".bias", None)))
    state = {k: (v.float() if v.dtype.is_floating_point else v) for k, v in tensors.items()}
    want = {n for n, _ in model.named_parameters()}  # tied parameters appear once
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = sorted(want - set(state))
    if result.unexpected_keys or missing:
        raise ValueError(f"{path}: config/tensor mismatch: unexpected {result.unexpected_keys[:5]}, missing {missing[:5]}")
    model.tie_weights()
    model.eval()
    model.requires_grad_(False)
    from vq.weights.hf_quantizer import attach

    attach(model)  # save_pretrained then writes what from_pretrained reads (also for pre-integration dirs)
    return model.to(device)
