"""`vq compress | eval | generate` end to end on the tiny Llama folder, and the CLI's errors."""
from __future__ import annotations

import json

import pytest

from vq.cli import main

from .conftest import TEXT

SMALL = ["--dim", "2", "--index-bits", "4", "--weights-per-codebook", "1024", "--calib-windows", "4"]


@pytest.fixture(scope="module")
def compressed(tiny_model_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "q"
    rc = main(["compress", str(tiny_model_dir), "--out", str(out), "--text", str(text_file), "--threads", "1", *SMALL])
    assert rc == 0
    return out


def test_compress_writes_a_loadable_directory(compressed):
    cfg = json.loads((compressed / "vq_config.json").read_text())
    assert cfg["compress"]["method"] == "gptvq"
    assert len(cfg["layers"]) == 14
    assert not (compressed.parent / "q.partial").exists()  # checkpoints removed after success
    assert not (compressed.parent / "q.tmp").exists()


def test_eval_json(compressed, text_file, tiny_model_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(compressed), "--text", str(text_file), "--json"]) == 0
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(tiny_model_dir), "--text", str(text_file), "--json"]) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for r in (q, ref):
        assert {"perplexity", "tokens", "bits_per_weight"} <= set(r)
        assert r["tokens"] == len(TEXT.encode()) // 512 * 511  # byte tokenizer: one token per byte
    assert ref["bits_per_weight"] == 32.0
    cfg = json.loads((compressed / "vq_config.json").read_text())
    assert q["bits_per_weight"] == cfg["bits"]["bits_per_weight"]


def test_generate(compressed, capsys):
    capsys.readouterr()
    assert main(["generate", str(compressed), "The quick", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_unknown_method(tiny_model_dir, tmp_path, capsys):
    assert main(["compress", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--method", "awq"]) == 2
    assert "unknown method 'awq'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_group_size_is_not_gptvqs_weights_per_codebook(tiny_model_dir, tmp_path, capsys):
    argv = ["compress", str(tiny_model_dir), "--out", str(tmp_path / "x")]
    assert main([*argv, "--method", "gptvq", "--group-size", "1024"]) == 2
    assert "for gptvq use --weights-per-codebook" in capsys.readouterr().err
    assert main([*argv, "--method", "rtn", "--weights-per-codebook", "1024"]) == 2
    assert "apply to --method gptvq only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_text_shorter_than_one_window(tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert main(["eval", str(tiny_model_dir), "--text", str(short)]) == 3  # input too short
    assert "shorter than one 512-token window" in capsys.readouterr().err
    assert main(["compress", str(tiny_model_dir), "--out", str(tmp_path / "y"), "--text", str(short), *SMALL]) == 3
    assert "shorter than one 512-token window" in capsys.readouterr().err


def test_truncated_model_file(compressed, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(compressed, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])
    assert main(["generate", str(bad), "hi"]) == 3  # a corrupted input file (InputError): vq.cli EXIT_INPUT
    assert "corrupted or truncated" in capsys.readouterr().err


def test_missing_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 3
    assert "not found" in capsys.readouterr().err


def test_resume_continues_a_killed_run(tiny_model_dir, text_file, tmp_path, compressed):
    """A leftover checkpoint directory from a killed run is picked up by --resume and gives the
    same stored tensors as the uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    from vq.weights import pipeline

    out = tmp_path / "r"
    args = ["compress", str(tiny_model_dir), "--out", str(out), "--text", str(text_file), "--threads", "1", *SMALL]
    real = pipeline._save_block

    def die_after_first(*a, **k):
        real(*a, **k)
        raise RuntimeError("killed")

    pipeline._save_block = die_after_first
    try:
        assert main(args) == 4  # RuntimeError
    finally:
        pipeline._save_block = real
    assert (tmp_path / "r.partial" / "state.json").exists() and not out.exists()
    assert main([*args, "--resume"]) == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(compressed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    shutil.rmtree(out)


def test_demo_on_the_tiny_model(tiny_model_dir, text_file, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["demo", "--model", str(tiny_model_dir), "--out", str(tmp_path / "demo"), "--text", str(text_file),
               "--eval-text", str(text_file), "--eval-windows", "2", "--prompt", "The quick", "--threads", "1",
               *SMALL])
    assert rc == 0
    out = capsys.readouterr().out
    assert "bits/weight" in out and "perplexity" in out and "reloaded" in out
    assert (tmp_path / "demo" / "vq_config.json").exists()


# -- --out safety (vq.outputs): refused before any work, nothing the tool did not write is touched --
def _no_work(monkeypatch):
    """Make loading a model or tokenizer fail loudly: a refused --out must come before either."""
    from vq.weights import hf

    def boom(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(hf, "load_model", boom)
    monkeypatch.setattr(hf, "load_tokenizer", boom)


def _tree(d):
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("command", ["compress", "demo"])
def test_out_holding_other_files_is_refused_untouched(command, tiny_model_dir, text_file, tmp_path, capsys,
                                                      monkeypatch):
    out = tmp_path / "precious"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_bytes(b"\\documentclass{article}\x00")
    (out / "sub" / "model.safetensors").write_bytes(b"not vq's")
    before = _tree(out)
    _no_work(monkeypatch)
    model = [str(tiny_model_dir)] if command == "compress" else ["--model", str(tiny_model_dir)]
    for extra, msg in (([], "exists and is not empty"), (["--overwrite"], "was not created by `vq compress`")):
        capsys.readouterr()
        assert main([command, *model, "--out", str(out), "--text", str(text_file), *SMALL, *extra]) == 2  # a bad --out is a bad argument (vq.cli exit code 2)
        err = capsys.readouterr().err
        assert msg in err and str(out) in err and "--overwrite" in err and "Traceback" not in err
        assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


@pytest.mark.parametrize("kind", ["file", "below-a-file"])
def test_out_that_is_a_file_is_refused_before_work(kind, tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights")
    out = f if kind == "file" else f / "q"
    _no_work(monkeypatch)
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--text", str(text_file), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and str(f) in err and "Traceback" not in err
    assert f.read_bytes() == b"weights" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_overwrite_replaces_a_previous_output_and_nothing_else(compressed, tiny_model_dir, text_file, tmp_path,
                                                               capsys):
    import shutil

    from safetensors.torch import load_file

    out = tmp_path / "q"
    shutil.copytree(compressed, out)
    (out / "model.safetensors").write_bytes(b"stale")  # vq's file: replaced
    (out / "README.md").write_text("my notes")  # not vq's: kept
    args = ["compress", str(tiny_model_dir), "--out", str(out), "--text", str(text_file), "--threads", "1", *SMALL]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"stale"
    assert main([*args, "--overwrite"]) == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(compressed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # (the header's metadata order varies)
    assert (out / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temp or old directories left
