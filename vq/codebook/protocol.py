"""The codec protocol every codebook family speaks (input checks: :mod:`vq.codebook.checks`).

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

from vq.codebook._integrity import read_header, read_safetensors, write_safetensors

__all__ = [
    "Codec",
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
        """JSON-serialisable constructor arguments; ``type(self).from_config(config())`` rebuilds it."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        """The codec that :meth:`config` describes, unfitted: ``cls(**config)``. A family whose
        constructor arguments were renamed overrides this to read its old saved configs too."""
        return cls(**config)

    @classmethod
    def check_stored_shapes(cls, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse (``ValueError``) a saved ``config`` whose declared sizes do not match the stored
        tensor ``shapes`` (read from the file header), before :meth:`from_config` allocates
        anything. Families whose constructor allocates in proportion to a config size override
        this; the default checks nothing (``load_state_dict`` checks shapes after construction)."""

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
    """Write ``codec`` to one safetensors file (tensors + JSON config + per-tensor SHA-256 in the
    metadata). Written to a temporary name then renamed, so an interrupted save never clobbers a
    good file."""
    meta = {"codec": type(codec).__name__, "config": json.dumps(codec.config())}
    write_safetensors(path, codec.state_dict(), meta)


def load_codec(path: str | Path) -> Codec:
    """Rebuild a codec written by :func:`save_codec`.

    The header is read first: the config's declared sizes are checked against the stored tensor
    shapes (:meth:`Codec.check_stored_shapes`) before the codec allocates anything; then the
    tensors are read and their checksums verified.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no codec file at {path}")
    shapes, meta = read_header(path)
    name = meta.get("codec")
    if name not in CODECS:
        raise ValueError(f"{path}: unknown codec {name!r}; known: {sorted(CODECS)}")
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the saved config is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the saved config must be a JSON object, got {type(config).__name__}")
    cls = CODECS[name]
    try:
        cls.check_stored_shapes(config, {k: shape for k, (shape, _) in shapes.items()})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    try:
        codec = cls.from_config(config)
    except TypeError as e:  # a key the constructor does not take, or a missing one
        raise ValueError(f"{path}: the saved {name} config {config} does not match "
                         f"{name}'s arguments ({e}); was it written by another version of vq?") from e
    tensors, _ = read_safetensors(path)
    return codec.load_state_dict(tensors)
