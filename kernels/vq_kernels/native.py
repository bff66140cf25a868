"""Build-and-load for the small native CPU libraries (no torch headers, loaded with ctypes).

One helper for every C/C++ source in the project (``vq_kernels/csrc/lut_cpu.cpp`` and the core's
``vq/codebook/csrc/nearest.c``): compile with the system compiler on first use into a cache
directory, keyed by a hash of the source, the flags and the CPU's feature flags (the builds
use ``-march=native``), write to a temporary name and rename, so concurrent processes never
load a half-written library. Returns ``None`` (after one logged warning) when no compiler is
available, the build fails or ``VQ_NO_NATIVE=1``; callers then use their pure-torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["load_library", "cache_dir"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$VQ_CACHE_DIR`` or ``~/.cache/vq``."""
    return Path(os.environ.get("VQ_CACHE_DIR", Path.home() / ".cache" / "vq"))


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ""


def load_library(src: Path, flags: list[str], compiler: str) -> ctypes.CDLL | None:
    """Compile ``src`` with ``compiler`` (an executable name, e.g. ``$CXX`` or ``g++``) and
    ``flags`` into the cache (once per source/flags/CPU) and load it; ``None`` if that fails."""
    if os.environ.get("VQ_NO_NATIVE", "0") not in ("", "0"):
        return None
    exe = shutil.which(compiler)
    if exe is None:
        log.warning("no %s compiler on PATH: %s runs on its pure-torch path", compiler, src.name)
        return None
    key = hashlib.sha256(src.read_bytes() + " ".join(flags).encode() + _cpu_flags().encode()).hexdigest()[:16]
    out = cache_dir() / f"{src.stem}_{key}.so"
    try:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            try:
                subprocess.run([exe, *flags, str(src), "-o", tmp], check=True, capture_output=True, text=True,
                               timeout=300)
                os.replace(tmp, out)  # atomic
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return ctypes.CDLL(str(out))
    except subprocess.CalledProcessError as e:
        log.warning("building %s failed; using the pure-torch path:\n%s", src.name, (e.stderr or "")[-2000:])
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native %s unavailable (%s); using the pure-torch path", src.name, e)
    return None
