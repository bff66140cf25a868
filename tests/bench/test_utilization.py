"""End to end on tiny gaussian data: the run, results.json round trip, the HTML report, the
CLI's error cases and its output-directory safety."""
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from vq.bench.commands import MARKER
from vq.bench.data import load_array, load_data
from vq.bench.report import PLOTS, check_results, read_results, write_report
from vq.bench.utilization import SCHEMA, UtilizationConfig, bench_utilization
from vq.cli import main

QUICK = ("kmeans", "rvq:3", "pq:2", "fsq", "e8p", "pvq")


def _strip_times(res):
    runs = [{k: v for k, v in r.items() if k not in ("fit_seconds", "encode_vectors_per_second")} for r in res["runs"]]
    return runs


@pytest.fixture(scope="module")
def run():
    data = load_data("gaussian", seed=3, max_vectors=3000)
    cfg = UtilizationConfig(quantizers=QUICK, sizes=(16, 64), peers=(), seed=3)
    return data, cfg, bench_utilization(data, cfg, progress=False)


def test_run_figures(run):
    data, _, res = run
    assert res["schema"] == SCHEMA and not res["skipped"]
    labels = [r["label"] for r in res["runs"]]
    assert len(labels) == len(set(labels))  # e8p (fixed size) ran once for both asked sizes
    e8p = next(r for r in res["runs"] if r["quantizer"] == "e8p")
    assert e8p["asked_sizes"] == [16, 64] and e8p["size"] == 65536 and e8p["size_note"]
    for r in res["runs"]:
        h = r["heldout"]
        assert 0 < h["used_fraction"] <= 1 and 1 <= h["perplexity"] <= r["size"] + 1e-9
        assert h["entropy_bits"] <= h["log2_k"] + 1e-9
        assert r["all_in_bits_per_vector"] == pytest.approx(r["bits_per_vector"] + r["overhead_bits"] / data.heldout.shape[0])
    km = {r["size"]: r for r in res["runs"] if r["quantizer"] == "kmeans"}
    assert km[16]["bits_per_vector"] == 4.0 and km[64]["heldout"]["mse"] < km[16]["heldout"]["mse"]
    for r in (r for r in res["runs"] if r["quantizer"] == "rvq:3"):
        m = [s["mse_after"] for s in r["heldout"]["stages"]]
        assert m[0] > m[1] > m[2]  # more stages, lower error
        assert m[-1] == pytest.approx(r["heldout"]["mse"], rel=1e-6)
        assert r["bits_per_vector"] == 3 * np.log2(r["size"])


def test_deterministic_with_seed(run):
    data, cfg, res = run
    again = bench_utilization(data, cfg, progress=False)
    assert _strip_times(again) == _strip_times(res)


def test_results_round_trip_and_html(run, tmp_path):
    _, cfg, res = run
    out = write_report(res, tmp_path)
    back = read_results(tmp_path / "results.json")
    assert UtilizationConfig.from_dict(back["config"]) == cfg
    assert back == json.loads(json.dumps(back)) and _strip_times(back) == json.loads(json.dumps(_strip_times(res)))
    broken = dict(back)
    del broken["runs"][0]["heldout"]["stages"]
    with pytest.raises(ValueError, match="stages"):
        check_results(broken)
    with pytest.raises(ValueError, match="schema"):
        check_results({**back, "schema": "other/9"})

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.ths, self.scripts = [], 0, 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a)
            self.ths += tag == "th"
            self.scripts += tag == "script"

    page = Page()
    page.feed((tmp_path / "report.html").read_text())
    assert sorted(i["alt"] for i in page.imgs) == sorted(PLOTS)
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.imgs)  # self-contained
    assert page.ths > 10 and page.scripts == 1
    for p in PLOTS:
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("falls with every stage" in s for s in out["summary"])


def test_load_array_checks(tmp_path):
    np.save(tmp_path / "r3.npy", np.zeros((2, 3, 4)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    bad = np.ones((10, 4))
    bad[3, 1] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(ValueError, match="r3.npy.*rank-2"):
        load_array(tmp_path / "r3.npy")
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.npy")
    with pytest.raises(ValueError, match="inf.npy: 1 of 10 rows"):
        load_array(tmp_path / "inf.npy")
    from safetensors.numpy import save_file

    save_file({"a": np.ones((6, 4), np.float32), "b": np.ones((3, 2), np.float32)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(ValueError, match="name one"):
        load_array(tmp_path / "t.safetensors")
    assert tuple(load_array(f"{tmp_path / 't.safetensors'}:b").shape) == (3, 2)


def _cli(capsys, *args):
    rc = main(["bench", "utilization", *args])
    return rc, capsys.readouterr()


@pytest.fixture
def arrays(tmp_path):
    g = np.random.default_rng(0)
    np.save(tmp_path / "ok.npy", g.standard_normal((600, 8)).astype(np.float32))
    np.save(tmp_path / "r1.npy", np.zeros(5))
    x = g.standard_normal((50, 8))
    x[7, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    return tmp_path


@pytest.mark.parametrize("args,msg,code", [  # code: vq.cli's exit code (3 a missing file, 2 a bad value)
    (["--data", "{d}/missing.npy"], "missing.npy does not exist", 3),
    (["--data", "{d}/r1.npy"], "rank-2", 2),
    (["--data", "{d}/nan.npy"], "NaN", 2),
    (["--data", "{d}/ok.npy", "--quantizers", "kmeans,nope"], "unknown quantizer 'nope'", 2),
    (["--data", "{d}/ok.npy", "--quantizers", "kmeans", "--sizes", "1024"], "kmeans cannot take K=1024", 2),
    (["--data", "{d}/ok.npy", "--sizes", "16,x"], "not a positive integer", 2),
])
def test_cli_errors(arrays, capsys, args, msg, code):
    out = arrays / "out"
    rc, cap = _cli(capsys, *[a.format(d=arrays) for a in args], "--out", str(out), "--peers", "none")
    assert rc == code and msg in cap.err and "Traceback" not in cap.err
    assert not out.exists()  # nothing written on a refused run


def test_cli_end_to_end_and_out_dir_safety(arrays, capsys):
    out = arrays / "out"
    common = ["--data", str(arrays / "ok.npy"), "--quantizers", "kmeans,rvq:2", "--sizes", "8,16",
              "--peers", "none", "--seed", "1", "--out", str(out)]
    rc, cap = _cli(capsys, *common)
    assert rc == 0, cap.err
    assert (out / MARKER).is_file() and (out / "report.html").is_file()
    assert "falls with every stage" in cap.out
    res = read_results(out / "results.json")
    assert res["command"][:3] == ["vq", "bench", "utilization"] and len(res["runs"]) == 4
    (out / "mine.txt").write_text("keep")
    rc, cap = _cli(capsys, *common)
    assert rc == 2 and "not empty" in cap.err
    rc, cap = _cli(capsys, *common, "--overwrite")
    assert rc == 0 and (out / "mine.txt").read_text() == "keep"  # only its own files replaced
    foreign = arrays / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("precious")
    rc, cap = _cli(capsys, *common[:-1], str(foreign), "--overwrite")
    assert rc == 2 and "not created by `vq bench`" in cap.err
    assert sorted(p.name for p in foreign.iterdir()) == ["data.txt"]


def test_peers_same_metrics(tmp_path):
    """Peers run on the same data and get the same figures from our code."""
    pytest.importorskip("faiss")
    data = load_data("gaussian", seed=0, max_vectors=2000)
    res = bench_utilization(data, UtilizationConfig(quantizers=("rvq:2",), sizes=(16,), peers=("faiss-rq:2",)), progress=False)
    ours, peer = res["runs"]
    assert peer["source"].startswith("peer: faiss") and ours["source"] == "vq"
    assert peer["heldout"].keys() == ours["heldout"].keys()
    assert peer["heldout"]["stages"][0]["mse_after"] > peer["heldout"]["mse"]
    # same order of error for the same bits on gaussian data
    assert 0.5 < peer["heldout"]["mse"] / ours["heldout"]["mse"] < 2


def test_array_rows_cut_into_dim_vectors_stay_in_one_split(tmp_path):
    x = np.arange(100 * 16, dtype=np.float32).reshape(100, 16)  # row r holds 16r .. 16r + 15
    np.save(tmp_path / "w.npy", x)
    data = load_data(str(tmp_path / "w.npy"), dim=8, seed=0)
    assert data.dim == 8 and data.fit.shape[0] + data.heldout.shape[0] == 200
    rows = lambda t: set((t[:, 0] // 16).long().tolist())  # noqa: E731 — source row of each piece
    assert not rows(data.fit) & rows(data.heldout)
    with pytest.raises(ValueError, match="not a multiple of --dim 5"):
        load_data(str(tmp_path / "w.npy"), dim=5)


def test_cli_out_below_a_file_is_refused_before_the_data_loads(arrays, capsys, monkeypatch):
    import vq.bench.data

    def boom(*a, **k):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(vq.bench.data, "load_data", boom)
    f = arrays / "ok.npy"
    before = f.read_bytes()
    rc, cap = _cli(capsys, "--data", str(f), "--sizes", "8", "--peers", "none", "--out", str(f / "report"))
    assert rc == 2 and f"--out {f / 'report'}" in cap.err and "is not a directory" in cap.err
    assert "Traceback" not in cap.err and f.read_bytes() == before


def test_cli_failed_report_keeps_the_previous_one(arrays, capsys, monkeypatch):
    import vq.bench.report

    out = arrays / "kept"
    common = ["--data", str(arrays / "ok.npy"), "--quantizers", "kmeans", "--sizes", "8", "--peers", "none",
              "--out", str(out)]
    assert _cli(capsys, *common)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_then_fail(res, d, *a, **k):
        (d / "results.json").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(vq.bench.report, "write_report", half_then_fail)
    rc, cap = _cli(capsys, *common, "--overwrite")
    assert rc == 4 and "disk full" in cap.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in arrays.iterdir() if p.name.startswith(".vq-")) == []  # no staging dir left
