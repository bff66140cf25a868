"""Bad command lines end in ONE line on stderr naming the flag / file at fault, no traceback, and
the exit code of their class (vq.cli: 2 usage, 3 input file, 4 runtime). Every case fails before
any model work, so the table runs in-process through ``vq.cli.main``; a few run as subprocesses
too, to see the real process's stderr and exit status."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from vq import cli


@pytest.fixture
def corrupt_dir(tmp_path):
    """A folder that looks compressed (it has vq_config.json) whose config is truncated JSON."""
    d = tmp_path / "compressed"
    d.mkdir()
    (d / "vq_config.json").write_text('{"bits": {"bits_per_weight": 2.')
    return d


@pytest.fixture
def empty_data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


# (argv with {dir} / {data} placeholders, exit code, fragments stderr must contain)
CASES = {
    "eval-max-windows-0": (["eval", "m", "--max-windows", "0"], 2, ["--max-windows", "got 0"]),
    "eval-max-windows-negative": (["eval", "m", "--max-windows", "-1"], 2, ["--max-windows", "got -1"]),
    "eval-max-windows-not-int": (["eval", "m", "--max-windows", "two"], 2, ["--max-windows", "'two'"]),
    "generate-empty-prompt": (["generate", "m", ""], 2, ["prompt is empty"]),
    "generate-max-new-tokens-0": (["generate", "m", "hi", "--max-new-tokens", "0"], 2, ["--max-new-tokens"]),
    "compress-group-size-0": (["compress", "m", "--out", "o", "--method", "rtn", "--group-size", "0"], 2,
                              ["--group-size", "got 0"]),
    "compress-group-size-negative": (["compress", "m", "--out", "o", "--method", "gptq", "--group-size", "-7"],
                                     2, ["--group-size", "got -7"]),
    "unknown-flag": (["eval", "m", "--no-such-flag"], 2, ["--no-such-flag"]),
    "missing-argument": (["eval"], 2, ["model"]),
    "model-not-found": (["eval", "{dir}/missing"], 3, ["missing", "not found"]),
    "corrupt-config-json": (["eval", "{dir}"], 2, ["vq_config.json", "not valid JSON"]),
    "model-json-not-json": (["train-tokenizer", "image", "--data", "{data}", "--out", "{data}/o",
                             "--model-json", "{bad"], 2, ["--model-json", "not valid JSON"]),
    "model-json-not-object": (["train-tokenizer", "image", "--data", "{data}", "--out", "{data}/o",
                               "--model-json", "[1, 2]"], 2, ["--model-json", "JSON object"]),
}


def _argv(argv: list[str], corrupt_dir, empty_data) -> list[str]:
    return [a.replace("{dir}", str(corrupt_dir)).replace("{data}", str(empty_data)) if a != "{bad" else a
            for a in argv]


def _run_main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse exits
        return int(e.code)


@pytest.mark.parametrize("name", list(CASES))
def test_cli_error_is_one_line_with_exit_code(name, corrupt_dir, empty_data, capsys):
    argv, code, fragments = CASES[name]
    rc = _run_main(_argv(argv, corrupt_dir, empty_data))
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("vq"), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("name", ["eval-max-windows-0", "generate-empty-prompt", "corrupt-config-json",
                                  "model-not-found"])
def test_cli_error_in_a_real_process(name, corrupt_dir, empty_data):
    argv, code, fragments = CASES[name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "vq.cli", *_argv(argv, corrupt_dir, empty_data)],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stderr.strip("\n").splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_debug_shows_the_traceback(corrupt_dir):
    with pytest.raises(ValueError, match="vq_config.json"):
        cli.main(["--debug", "eval", str(corrupt_dir)])


def test_exit_codes_per_class():
    assert cli.exit_code(cli.UsageError("x")) == cli.EXIT_USAGE == 2
    assert cli.exit_code(ValueError("x")) == 2
    assert cli.exit_code(FileNotFoundError("x")) == cli.EXIT_INPUT == 3
    from vq.codebook.checks import InputError

    assert cli.exit_code(InputError("x")) == 3
    assert cli.exit_code(RuntimeError("x")) == cli.EXIT_RUNTIME == 4
    assert cli.exit_code(MemoryError()) == 4


def test_runtime_error_exits_4_with_one_line(monkeypatch, capsys):
    from vq.weights import commands

    def boom(spec):
        raise RuntimeError("kernel failed\nsecond line")

    monkeypatch.setattr(commands, "_load_any", boom)
    assert cli.main(["generate", "m", "hi"]) == 4
    err = capsys.readouterr().err
    assert err == "vq generate: error: kernel failed second line\n"


@pytest.mark.parametrize("cls,bits,group,warns", [("rtn", 2, 7, True), ("gptq", 2, 7, True),
                                                  ("rtn", 4, 1, True), ("rtn", 4, 7, False),
                                                  ("gptq", 2, 12, False), ("gptq", 4, 128, False)])
def test_small_group_size_warns_with_bits_per_weight(cls, bits, group, warns, caplog):
    from vq.weights.gptq import GPTQConfig
    from vq.weights.rtn import RTNConfig, check_group_size

    config = {"rtn": RTNConfig, "gptq": GPTQConfig}[cls]
    with caplog.at_level(logging.WARNING, logger="vq.weights.rtn"):
        config(bits=bits, group_size=group)
    want = f"{check_group_size(bits, group):.2f} bits/weight"
    hits = [r for r in caplog.records if want in r.getMessage()]
    assert bool(hits) == warns, caplog.text
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        config(bits=bits, group_size=0)


def test_group_bits_match_the_stored_tensors():
    """check_group_size's bits/weight is what rtn stores (groups dividing in_features)."""
    import torch

    from vq.weights.rtn import RTNConfig, check_group_size, rtn_quantize

    for bits, group in ((2, 8), (4, 1), (3, 32)):
        q = rtn_quantize(torch.randn(16, 64), RTNConfig(bits=bits, group_size=group))
        assert q.bits_per_weight() == pytest.approx(check_group_size(bits, group))


def test_perplexity_needs_at_least_one_window():
    """Zero windows was a ZeroDivisionError; uniform logits over V classes give perplexity V."""
    from types import SimpleNamespace

    import torch

    from vq.weights.data import perplexity

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 7))  # (b, L, vocab)

    win = torch.randint(0, 7, (3, 16))
    assert perplexity(Uniform(), win, progress=False) == (pytest.approx(7.0), 3 * 15)
    with pytest.raises(ValueError, match=r"n >= 1"):
        perplexity(Uniform(), win[:0], progress=False)
