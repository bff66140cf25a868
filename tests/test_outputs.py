"""vq.outputs: what a command may write, replace or refuse — checked before any work starts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vq.outputs import MARKER, OutputKind, check_out_dir, is_vq_output, mark_output, staged_dir

KIND = OutputKind(kind="test-output", command="vq test", files=("result.txt", "*.png"))
OTHER = OutputKind(kind="other-output", command="vq other", files=("result.txt",))


def _write(spec, out, text="new", overwrite=False):
    with staged_dir(out, spec, overwrite=overwrite) as tmp:
        (tmp / "result.txt").write_text(text)


def _snapshot(d):
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _foreign_dir(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_bytes(b"precious\x00bytes")
    (d / "sub" / "result.txt").write_text("also mine")
    return d


def test_new_and_empty_directories_are_written_and_marked(tmp_path):
    for out in (tmp_path / "a" / "b", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        _write(KIND, out)
        assert (out / "result.txt").read_text() == "new" and is_vq_output(out, KIND)
        assert json.loads((out / MARKER).read_text())["written_by"] == "vq test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]  # no temp dirs left beside


def test_non_empty_foreign_directory_is_refused_and_untouched(tmp_path):
    d = _foreign_dir(tmp_path)
    before = _snapshot(d)
    with pytest.raises(ValueError, match=f"--out {d} exists and is not empty.*--overwrite"):
        _write(KIND, d)
    with pytest.raises(ValueError, match=f"--out {d} was not created by `vq test`"):
        _write(KIND, d, overwrite=True)
    assert _snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_existing_file_and_path_below_a_file_are_refused(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"keep")
    for out, msg in ((f, "exists and is not a directory"), (f / "sub", "is not a directory")):
        for ow in (False, True):
            with pytest.raises(ValueError, match=msg):
                check_out_dir(out, KIND, overwrite=ow)
    assert f.read_bytes() == b"keep"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a 0o555 directory anyway")
def test_unwritable_location_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro / "new", ro):
            with pytest.raises(ValueError, match="cannot write in"):
                check_out_dir(out, KIND, overwrite=False)
    finally:
        ro.chmod(0o755)


def test_overwrite_replaces_only_vqs_own_files(tmp_path):
    out = tmp_path / "out"
    _write(KIND, out, "old")
    (out / "plot.png").write_text("old plot")  # matches the kind's patterns: vq's
    (out / "user.txt").write_text("the user's")  # not vq's: must survive
    with pytest.raises(ValueError, match="--overwrite"):
        _write(KIND, out, "new")
    assert (out / "result.txt").read_text() == "old"
    _write(KIND, out, "new", overwrite=True)
    assert (out / "result.txt").read_text() == "new"
    assert (out / "user.txt").read_text() == "the user's"
    assert not (out / "plot.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_refuses_another_kind_of_vq_output(tmp_path):
    out = tmp_path / "out"
    _write(OTHER, out, "other's")
    with pytest.raises(ValueError, match="not created by `vq test`"):
        _write(KIND, out, overwrite=True)
    assert (out / "result.txt").read_text() == "other's"


def test_failure_while_writing_leaves_the_target_and_no_temp(tmp_path):
    out = tmp_path / "out"
    _write(KIND, out, "good")
    with pytest.raises(OSError, match="disk full"):
        with staged_dir(out, KIND, overwrite=True) as tmp:
            (tmp / "result.txt").write_text("half")
            raise OSError("disk full")
    assert (out / "result.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _resume(path):
    check_out_dir(path, KIND, overwrite=False, resume=True, sibling=False)
    return mark_output(path, KIND)


def test_a_resumable_run_reuses_its_own_directory_and_refuses_others(tmp_path):
    out = _resume(tmp_path / "run")
    (out / "result.txt").write_text("step 1")
    (out / "my-notes.txt").write_text("the user's")
    assert _resume(out) == out  # its own previous run: resumed, nothing removed
    assert (out / "result.txt").read_text() == "step 1" and (out / "my-notes.txt").exists()
    d = _foreign_dir(tmp_path)
    before = _snapshot(d)
    with pytest.raises(ValueError, match="not empty"):
        _resume(d)
    assert _snapshot(d) == before and not (d / MARKER).exists()
    legacy = tmp_path / "legacy"  # a run from before markers: only entries the command writes
    legacy.mkdir()
    (legacy / "result.txt").write_text("old run")
    _resume(legacy)
    assert is_vq_output(legacy, KIND) and (legacy / "result.txt").read_text() == "old run"


def test_dot_as_target(tmp_path, monkeypatch):
    d = tmp_path / "here"
    d.mkdir()
    monkeypatch.chdir(d)
    _write(KIND, ".", "first")  # an empty directory is filled in place: the cwd stays valid
    assert Path.cwd() == d and (d / "result.txt").read_text() == "first" and is_vq_output(d, KIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
