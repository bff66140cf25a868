"""The one safetensors reader/writer of vq: per-tensor SHA-256 checksums and header-only shapes.

Every file vq writes (a codec, a compressed model's ``model.safetensors``) goes through
:func:`write_safetensors`, which stores ``{tensor name: SHA-256 hex of its raw bytes}`` as JSON
under the metadata key :data:`CHECKSUM_KEY`; :func:`read_safetensors` recomputes and compares
them, and a mismatch raises ``InputError`` (a ``ValueError``: the command line's input-error exit code) naming the file and the tensor. Files written before
checksums existed (no such key) still load. Cost: SHA-256 runs at ~2 GB/s (51 ms for a 100 MB
tensor on the dev box; 48 ms for the 86.7 MB SmolLM2 2-bit ``model.safetensors``, which takes a
warm ``vq.load`` from 0.24 s to 0.32 s).

:func:`read_header` reads names, shapes and dtypes from the header without touching the data,
so a loader can check sizes declared in a config before it allocates anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vq.codebook.checks import InputError

__all__ = ["CHECKSUM_KEY", "tensor_sha256", "write_safetensors", "read_header", "read_safetensors", "verify_file"]

log = logging.getLogger(__name__)

#: metadata key holding the JSON map tensor name -> SHA-256 hex digest
CHECKSUM_KEY = "vq_sha256"


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 hex digest of a tensor's raw bytes (C order, as safetensors stores them)."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(memoryview(flat.view(torch.uint8).numpy())).hexdigest()


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` + ``metadata`` + their checksums to ``<path>.tmp``, then rename to ``path``
    (a crash never leaves a half file at ``path``)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta[CHECKSUM_KEY] = json.dumps({k: tensor_sha256(v) for k, v in tensors.items()}, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _unreadable(path: Path, e: Exception) -> InputError:
    return InputError(f"{path} is corrupted or truncated (not a readable safetensors file): {e}")


def _read(path: str | os.PathLike, entry) -> tuple[dict[str, Any], dict[str, str]]:
    """``({name: entry(f, name)}, metadata)`` of a safetensors file ``f``; errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: entry(f, k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own (Rust) error types for corrupt files
        raise _unreadable(path, e) from e


def _slice_spec(f, name: str) -> tuple[tuple[int, ...], str]:
    s = f.get_slice(name)
    return tuple(s.get_shape()), s.get_dtype()


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """``({name: (shape, safetensors dtype string)}, metadata)`` from the header only (no data read)."""
    return _read(path, _slice_spec)


def _checksums(path: Path, meta: dict[str, str]) -> dict[str, str] | None:
    raw = meta.get(CHECKSUM_KEY)
    if raw is None:
        log.debug("%s has no checksums (written before vq stored them); not verified", path)
        return None
    try:
        sums = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: the checksum metadata is corrupted ({e})") from e
    if not isinstance(sums, dict):
        raise InputError(f"{path}: the checksum metadata is corrupted (not a name -> digest map)")
    return sums


def _verify(path: Path, name: str, t: Tensor, sums: dict[str, str]) -> None:
    want = sums.get(name)
    if want is None:
        raise InputError(f"{path}: tensor {name!r} has no stored checksum (the file was altered)")
    if tensor_sha256(t) != want:
        raise InputError(f"{path}: checksum mismatch in tensor {name!r} (the file is corrupted)")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read every tensor and the metadata, verifying the checksums when the file has them.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and the
    tensor) for an unreadable file or a checksum mismatch.
    """
    path = Path(path)
    tensors, meta = _read(path, lambda f, name: f.get_tensor(name))
    sums = _checksums(path, meta)
    if sums is not None:
        for name, t in tensors.items():
            _verify(path, name, t, sums)
        if set(sums) - set(tensors):
            raise InputError(f"{path}: tensors {sorted(set(sums) - set(tensors))[:5]} are missing (the file was altered)")
    return tensors, meta


def verify_file(path: str | os.PathLike) -> int | None:
    """Check every tensor of ``path`` against its stored checksum, one tensor in memory at a time.

    Returns the number of tensors checked, or ``None`` for a readable file without checksums;
    raises ``ValueError`` at the first mismatch (naming file and tensor).
    """
    from safetensors import safe_open

    path = Path(path)
    shapes, meta = read_header(path)
    sums = _checksums(path, meta)
    if sums is None:
        return None
    with safe_open(str(path), framework="pt") as f:  # the header was just read: it opens
        for name in sorted(shapes):
            try:
                t = f.get_tensor(name)
            except Exception as e:  # safetensors' own (Rust) error types: data past the end of the file
                raise _unreadable(path, e) from e
            _verify(path, name, t, sums)
    if set(sums) - set(shapes):
        raise InputError(f"{path}: tensors {sorted(set(sums) - set(shapes))[:5]} are missing (the file was altered)")
    return len(shapes)
