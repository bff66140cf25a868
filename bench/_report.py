"""The last line every bench prints: one JSON object with the figures, plus where and when they
were measured (``"run"``: date, machine, CPU, Python/torch versions, torch threads, git commit),
so a row of docs/results.md can name its machine, date and commit. Not a bench: imported by them."""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["run_info", "print_result"]

_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_info() -> dict[str, Any]:
    """Where and when this process runs; ``commit`` / ``dirty`` are None outside a git checkout."""
    import torch  # imported here: lut-style benches set environment variables before torch loads

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": None if status is None else bool(status),
    }


def print_result(result: dict[str, Any]) -> None:
    """Print ``result`` and :func:`run_info` as one JSON line (the bench's last line)."""
    print(json.dumps({**result, "run": run_info()}))
