"""Output directories: what a vq command may write, replace or refuse (docs/formats.md, "Output directories").

Every command that writes a directory (``vq compress`` / ``vq demo``, ``vq train-tokenizer``,
``vq bench utilization``) goes through this module, so the rules are the same everywhere:

- a target that does not exist, or an empty directory, is fine;
- an existing *file* (or anything that is not a directory), a path below a regular file, or a
  location the process cannot write is refused **before any work starts**;
- an existing non-empty directory is refused unless ``overwrite`` is set, and even then only
  when it holds vq's marker file :data:`MARKER` naming the same kind of output. Such a directory is
  replaced atomically: the new output is assembled in a hidden sibling temp directory, then swapped
  in. Entries of the old directory that vq did not write (they match none of the marker's file
  patterns) are carried over into the new one: nothing vq did not write is ever deleted.

A resumable kind (a tokenizer run) is checked with ``check_out_dir(..., resume=True)`` and written
in place (:func:`mark_output`): its directory holding vq's marker *is* the run to resume, reused
without ``overwrite``.

The marker is a small JSON file: ``{"written_by": "vq compress", "kind": "compressed-model",
"files": [glob patterns of what the command writes]}``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKER", "OutputKind", "check_out_dir", "is_vq_output", "mark_output", "replace_dir", "staged_dir",
           "write_marker"]

MARKER = ".vq-output"
_OURS = ".vq-"  # prefix of vq's own bookkeeping entries (marker, its temp file, write probes, staging dirs)


@dataclass(frozen=True)
class OutputKind:
    """One kind of output directory: ``kind`` is matched against an existing marker, ``command`` and
    ``flag`` appear in messages, ``files`` are glob patterns of the entries the command writes."""

    kind: str
    command: str
    files: tuple[str, ...]
    flag: str = "--out"


def _read_marker(path: Path) -> dict | None:
    try:
        m = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("kind"), str) else None


def is_vq_output(path: str | os.PathLike, spec: OutputKind) -> bool:
    """True when ``path`` is a directory holding vq's marker for outputs of ``spec.kind``."""
    m = _read_marker(Path(path))
    return m is not None and m["kind"] == spec.kind


def _foreign(path: Path, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Entries of ``path`` that vq did not write (match none of ``patterns``)."""
    return sorted(e.name for e in path.iterdir()
                  if not e.name.startswith(_OURS) and not any(fnmatch.fnmatchcase(e.name, p) for p in patterns))


def _probe_writable(d: Path, spec: OutputKind, target: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=_OURS + "probe-", dir=d)
    except OSError as e:
        raise ValueError(f"{spec.flag} {target}: cannot write in {d} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(path: str | os.PathLike, spec: OutputKind, *, overwrite: bool, resume: bool = False,
                  sibling: bool = True) -> None:
    """Refuse (``ValueError``, one line naming the path and ``--overwrite``) a target this command may
    not write, before any work. ``resume``: a previous output of the same kind is reused in place
    (no ``overwrite`` needed). ``sibling``: the output is staged next to the target, so its parent
    must be writable too."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{spec.flag} {out} exists and is not a directory; choose a directory path")
    anc = _existing_ancestor(out)
    if not anc.is_dir():
        raise ValueError(f"{spec.flag} {out}: {anc} is not a directory")
    if out.is_dir():
        _probe_writable(out, spec, out)
        if sibling:
            _probe_writable(out.absolute().parent, spec, out)
        entries = [e for e in out.iterdir() if not e.name.startswith(_OURS) or e.name == MARKER]
        if entries:
            ours = is_vq_output(out, spec)
            if resume and (ours or not _foreign(out, spec.files)):
                return  # its own run (a run from before markers: every entry is one the command writes)
            if not overwrite:
                what = "a previous output" if ours else "files"
                raise ValueError(f"{spec.flag} {out} exists and is not empty (it holds {what}); choose a new or empty "
                                 f"directory" + (f", or pass --overwrite to replace an earlier `{spec.command}` output"
                                                 if not resume else ""))
            if not ours:
                raise ValueError(f"{spec.flag} {out} was not created by `{spec.command}` (no {MARKER} marker of a "
                                 f"{spec.kind}); --overwrite replaces only vq's own outputs, refusing to touch it")
    else:
        _probe_writable(anc, spec, out)


def write_marker(d: Path, spec: OutputKind, written: list[str] | tuple[str, ...] = ()) -> None:
    """Write (atomically) the marker that makes ``d`` recognisable as vq's output of ``spec.kind``;
    ``written``: names of entries the command wrote beyond ``spec.files``'s patterns."""
    fd, tmp = tempfile.mkstemp(prefix=MARKER + ".tmp-", dir=d)
    with os.fdopen(fd, "w") as f:
        files = list(spec.files) + [n for n in written if n not in spec.files]
        json.dump({"written_by": spec.command, "kind": spec.kind, "files": files}, f)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, d / MARKER)


def replace_dir(tmp: Path, final: Path, spec: OutputKind | None = None) -> None:
    """Move a finished directory ``tmp`` to ``final``. A missing or empty ``final`` is simply replaced;
    a non-empty one must be vq's output (its marker, of ``spec.kind`` when given): entries of it that
    vq did not write are moved into ``tmp`` first, then ``final`` is swapped out (renamed to a hidden
    sibling), ``tmp`` renamed into place, and the old one — only vq's files by now — removed. An empty
    ``final`` is kept and ``tmp``'s entries are moved into it."""
    tmp, final = Path(tmp), Path(final).absolute()  # absolute: "." has no name to rename
    if final.exists() and not final.is_dir():
        raise ValueError(f"{final} exists and is not a directory; refusing to replace it")
    if final.is_dir():
        m = _read_marker(final)
        if any(not e.name.startswith(_OURS) for e in final.iterdir()) and (
                m is None or (spec is not None and m["kind"] != spec.kind)):
            raise ValueError(f"{final} is not a previous vq output (no {MARKER} marker"
                             + (f" of a {spec.kind}" if spec else "") + "); refusing to replace it")
        for name in _foreign(final, [str(p) for p in m.get("files", [])]) if m else []:
            if not (tmp / name).exists():
                os.replace(final / name, tmp / name)  # the user's files stay, in the new directory
    if final.is_dir() and not any(final.iterdir()):  # empty: fill it, keeping the directory itself (cwd, mode)
        for e in tmp.iterdir():
            os.replace(e, final / e.name)
        tmp.rmdir()
    elif final.is_dir():
        old = Path(tempfile.mkdtemp(prefix=_OURS + "old-", dir=final.absolute().parent))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, spec: OutputKind, *, overwrite: bool) -> Iterator[Path]:
    """Check ``path``, yield a fresh hidden sibling temp directory to write the output into, then
    mark it and swap it into place (:func:`replace_dir`); on any error the temp directory goes and
    ``path`` is untouched."""
    check_out_dir(path, spec, overwrite=overwrite)
    final = Path(path).absolute()  # absolute: "." has no name to stage beside
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_OURS}tmp-{final.name}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        write_marker(tmp, spec, sorted(e.name for e in tmp.iterdir()))
        replace_dir(tmp, final, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mark_output(path: str | os.PathLike, spec: OutputKind) -> Path:
    """For outputs written incrementally into the target (a resumable run, checked beforehand with
    ``check_out_dir(..., resume=True, sibling=False)``): create the directory and write its marker
    unless it has one (the one process that writes, rank 0 under torchrun). Returns the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if not is_vq_output(out, spec):
        write_marker(out, spec)
    return out
