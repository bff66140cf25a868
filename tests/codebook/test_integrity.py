"""Codec files: per-tensor checksums written by save_codec and verified by load_codec; configs
whose declared sizes do not match the stored tensors are refused before anything is allocated."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vq.codebook import KMeans, SimVQCodebook, load_codec, save_codec
from vq.codebook._integrity import CHECKSUM_KEY, verify_file


def peak_rss_growth_mb(script: str) -> tuple[int, str]:
    """Run ``script`` in a fresh interpreter (after ``import torch, vq``); return (growth of its peak
    RSS over the script, in MB; the script's stderr+stdout)."""
    code = textwrap.dedent("""
        import resource, torch, vq.codebook, vq.weights.format
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
        {body}
        finally:
            print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
    """).format(body=textwrap.indent(textwrap.dedent(script), "    "))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)
    out = res.stdout + res.stderr
    kb = int(out.split("PEAK_KB")[1].split()[0])
    return kb // 1024, out


@pytest.fixture
def kmeans_file(tmp_path):
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "km.safetensors"
    save_codec(KMeans(16, seed=0).fit(x), path)
    return path


def test_codec_file_stores_a_checksum_per_tensor(kmeans_file):
    with safe_open(str(kmeans_file), framework="pt") as f:
        sums = json.loads(f.metadata()[CHECKSUM_KEY])
        assert set(sums) == set(f.keys()) and len(sums) >= 1
    assert verify_file(kmeans_file) == len(sums)


def test_flipped_codec_payload_is_refused(kmeans_file, flip_bytes):
    with safe_open(str(kmeans_file), framework="pt") as f:
        name = next(iter(f.keys()))
    flip_bytes(kmeans_file, name)
    with pytest.raises(ValueError, match=f"{kmeans_file.name}: checksum mismatch in tensor '{name}'"):
        load_codec(kmeans_file)
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_file(kmeans_file)


def test_vq_verify_on_a_codec_file(kmeans_file, capsys, flip_bytes):
    from vq.cli import main

    assert main(["verify", str(kmeans_file)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {kmeans_file}")
    flip_bytes(kmeans_file, "centroids")
    assert main(["verify", str(kmeans_file)]) == 3  # a corrupted input file: vq.cli EXIT_INPUT
    assert "checksum mismatch in tensor 'centroids'" in capsys.readouterr().err


def test_codec_file_without_checksums_still_loads(kmeans_file, caplog, strip_checksums):
    want = load_codec(kmeans_file).centroids
    strip_checksums(kmeans_file)
    with caplog.at_level(logging.DEBUG, logger="vq.codebook._integrity"):
        got = load_codec(kmeans_file).centroids
    assert torch.equal(got, want)
    assert "no checksums" in caplog.text
    assert verify_file(kmeans_file) is None


def _simvq_with_claimed_k(tmp_path, k: int):
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "simvq.safetensors"
    save_codec(SimVQCodebook(4, 16, niter=2).fit(x), path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    meta["config"] = json.dumps({**json.loads(meta["config"]), "k": k})  # a crafted config, sums intact
    save_file(tensors, str(path), metadata=meta)
    return path


def test_simvq_config_claiming_a_huge_codebook_is_refused_with_little_memory(tmp_path):
    path = _simvq_with_claimed_k(tmp_path, 20_000_000)  # unchecked: a (2e7, 4) basis, 320 MB float32
    grew_mb, out = peak_rss_growth_mb(f"""
        from vq.codebook import load_codec
        try:
            load_codec({str(path)!r})
        except ValueError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in out and "declares basis (20000000, 4), the file stores (16, 4)" in out, out
    assert grew_mb < 100, out


@pytest.mark.parametrize("config", [{"dim": 1, "pulses": 20_000_000}, {"dim": 20_000_000, "pulses": 1},
                                    {"dim": 10**12, "pulses": 10**12}])
def test_pvq_config_with_huge_sizes_is_refused_with_little_memory(tmp_path, config):
    from vq.codebook import PVQ

    path = tmp_path / "pvq.safetensors"
    save_codec(PVQ(4, 3), path)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {n: f.get_tensor(n) for n in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps({**config, "gain_bits": 8})})
    grew_mb, out = peak_rss_growth_mb(f"""
        from vq.codebook import load_codec
        try:
            load_codec({str(path)!r})
        except ValueError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in out and ("GiB enumeration table" in out or "int64" in out), out
    assert grew_mb < 100, out


def test_pvq_sizes_that_fit_still_build():
    from vq.codebook import PVQ
    from vq.codebook.lattice import pyramid_count

    assert PVQ(1, 1000).num_shapes == 2
    assert PVQ(16, 10).num_shapes == pyramid_count(16, 10)
