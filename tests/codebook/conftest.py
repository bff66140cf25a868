"""Shared fixtures of the core's tests."""
import subprocess
import sys

import pytest


@pytest.fixture
def run_without_compiler(tmp_path):
    """``run(code)``: ``code`` in a fresh interpreter that finds no C compiler and an empty native
    build cache (``tmp_path``); asserts it exits 0 and returns the first line it printed."""

    def run(code: str) -> str:
        env = {"VQ_CACHE_DIR": str(tmp_path), "CC": "/nonexistent/cc", "PATH": "/nonexistent"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("\n")[0]

    return run
