"""The codec protocol every codebook family speaks, plus the shared input checks.

A codec maps vectors to integer codes and back::

    codec.fit(x, weights=None)      # x: (n, d) float; weights: (n,) or (n, d), >= 0
    codes = codec.encode(x)         # (n, d) -> (n, m) int64, m = codebooks / stages
    xhat = codec.decode(codes)      # (n, m) -> (n, d) float32
    codec.bits_per_vector()         # code bits only
    codec.overhead_bits()           # codebook / side-info storage

State is tensors only (``state_dict``) plus a JSON-able ``config()``; :func:`save_codec`
writes both into one safetensors file and :func:`load_codec` rebuilds the codec bit-exactly.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "Codec",
    "check_vectors",
    "check_weights",
    "check_codes",
    "save_codec",
    "load_codec",
    "register_codec",
    "CODECS",
]

CODECS: dict[str, type["Codec"]] = {}


def register_codec(cls: type["Codec"]) -> type["Codec"]:
    """Class decorator: make ``cls`` loadable by :func:`load_codec` under its class name."""
    CODECS[cls.__name__] = cls
    return cls


def check_vectors(x: Any, dim: int | None = None, name: str = "x") -> Tensor:
    """Validate a batch of vectors and return it as a float tensor (float64 kept, else float32).

    Raises ``TypeError`` for non-tensors / non-float dtypes and ``ValueError`` for wrong rank,
    wrong last dimension, empty input or non-finite values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (n = 0)")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {dim}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x if x.dtype == torch.float64 else x.float()


def check_weights(weights: Any, x: Tensor, name: str = "weights") -> Tensor | None:
    """Validate importance weights for ``x`` (n, d): shape (n,) or (n, d), finite, >= 0.

    Returns ``None`` when ``weights`` is ``None``, else a tensor of ``x``'s dtype and device.
    """
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(weights).__name__}")
    n, d = x.shape
    if tuple(weights.shape) not in ((n,), (n, d)):
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, {d}) to match x, got {tuple(weights.shape)}"
        )
    weights = weights.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    if not bool((weights > 0).any()):
        raise ValueError(f"{name} are all zero")
    return weights


def check_codes(codes: Any, m: int, k: int | list[int] | tuple[int, ...], name: str = "codes") -> Tensor:
    """Validate integer codes of shape (n, m) with ``0 <= codes[:, j] < k[j]``; return int64."""
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
    if codes.dim() != 2 or codes.shape[1] != m:
        raise ValueError(f"{name} must have shape (n, {m}), got shape {tuple(codes.shape)}")
    codes = codes.long()
    if codes.numel() == 0:
        return codes
    ks = [k] * m if isinstance(k, int) else list(k)
    upper = torch.tensor(ks, device=codes.device)
    if bool((codes < 0).any()) or bool((codes >= upper).any()):
        bad = codes[(codes < 0) | (codes >= upper)][0].item()
        raise ValueError(f"{name} out of range: found {bad}, valid range is [0, {ks}) per column")
    return codes


class Codec(ABC):
    """Base class: the protocol plus shared serialisation. Subclasses set ``dim`` and implement
    ``fit``/``encode``/``decode``/``bits_per_vector``/``overhead_bits``/``config``/
    ``state_dict``/``load_state_dict``."""

    dim: int
    #: bits used to store one codebook scalar when counting overhead (fp16 by default)
    codebook_bits: ClassVar[int] = 16

    @abstractmethod
    def fit(self, x: Tensor, weights: Tensor | None = None) -> "Codec": ...

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor: ...

    @abstractmethod
    def bits_per_vector(self) -> float: ...

    def overhead_bits(self) -> int:
        """Bits needed to store the learned codebooks (fp16 per scalar by default)."""
        return sum(t.numel() for t in self.state_dict().values()) * self.codebook_bits

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``type(self)(**config())`` rebuilds it."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> "Codec":
        if state:
            raise ValueError(f"{type(self).__name__} has no tensors but got {sorted(state)}")
        return self

    # -- helpers shared by subclasses ------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return True

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(x) first")

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x))

    def bits_per_dim(self) -> float:
        return self.bits_per_vector() / self.dim


def save_codec(codec: Codec, path: str | Path) -> None:
    """Write ``codec`` to one safetensors file (tensors + JSON config in the metadata).

    Written to a temporary name then renamed, so an interrupted save never clobbers a good file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in codec.state_dict().items()}
    meta = {"codec": type(codec).__name__, "config": json.dumps(codec.config())}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_codec(path: str | Path) -> Codec:
    """Rebuild a codec written by :func:`save_codec`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no codec file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors codec file: {e}") from e
    name = meta.get("codec")
    if name not in CODECS:
        raise ValueError(f"{path}: unknown codec {name!r}; known: {sorted(CODECS)}")
    codec = CODECS[name](**json.loads(meta["config"]))
    return codec.load_state_dict(tensors)
