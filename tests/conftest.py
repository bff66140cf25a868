"""Suite-wide settings. The suite runs under pytest-xdist (`make test` uses `-n 2`), one worker
per core, so each worker keeps torch and faiss to one thread: small ops oversubscribed across
workers ran up to ~17x slower than single-threaded on the 2-core CI machine."""
import json
import struct

import pytest
import torch

torch.set_num_threads(1)
try:
    import faiss
except ImportError:  # faiss is an optional extra
    faiss = None
if faiss is not None:
    faiss.omp_set_num_threads(1)


# -- safetensors file surgery for the integrity tests (tests/codebook, tests/weights) -------------
def _flip_bytes(path, tensor: str, n: int = 4) -> None:
    """Invert the first ``n`` data bytes of ``tensor`` in a safetensors file (header untouched)."""
    raw = bytearray(path.read_bytes())
    (hlen,) = struct.unpack("<Q", raw[:8])
    begin = 8 + hlen + json.loads(raw[8 : 8 + hlen])[tensor]["data_offsets"][0]
    raw[begin : begin + n] = bytes(b ^ 0xFF for b in raw[begin : begin + n])
    path.write_bytes(bytes(raw))


def _strip_checksums(path) -> None:
    """Rewrite a file as vq wrote it before checksums existed (same tensors and metadata, no sums)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vq.codebook._integrity import CHECKSUM_KEY

    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != CHECKSUM_KEY}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture
def flip_bytes():
    return _flip_bytes


@pytest.fixture
def strip_checksums():
    return _strip_checksums
