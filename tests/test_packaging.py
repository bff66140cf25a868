"""The repo's kernels/ and tokenizers/ folders must never shadow the real packages."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _origin(name: str) -> str | None:
    out = subprocess.run(
        [sys.executable, "-c", f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin if s else None)"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    return out.stdout.strip()


@pytest.mark.parametrize("name", ["tokenizers", "kernels"])
def test_top_level_names_not_shadowed(name):
    origin = _origin(name)
    if origin == "None":
        assert name == "kernels"  # the HF kernels hub package is optional; just not ours
        return
    ours = REPO / name  # the repo's source root of that name (kernels/ or tokenizers/)
    assert not Path(origin).resolve().is_relative_to(ours), f"import {name} resolves into the repo: {origin}"


def test_real_tokenizers_package_and_ours_both_import():
    import tokenizers  # Hugging Face's, needed by transformers
    import vq_kernels
    import vq_tokenizers

    assert hasattr(tokenizers, "Tokenizer")
    assert Path(vq_tokenizers.__file__).resolve().is_relative_to(REPO / "tokenizers" / "vq_tokenizers")
    assert Path(vq_kernels.__file__).resolve().is_relative_to(REPO / "kernels" / "vq_kernels")


def test_import_vq_has_no_side_effects():
    out = subprocess.run([sys.executable, "-c", "import vq, vq.codebook"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""
