"""Two-process gloo DDP: identical codebooks on every rank, no hang when one rank evaluates."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_two_rank_codebooks_identical_and_no_hang(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tokenizers")]))
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)], env=env, timeout=240, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = load_file(str(tmp_path / "rank0.safetensors"))
    s1 = load_file(str(tmp_path / "rank1.safetensors"))
    keys = [k for k in s0 if "codebook" in k or "ema_" in k or "usage" in k]
    assert {"vq_ema.codebook", "vq_grad.codebook", "rvq.vqs.0.codebook", "rvq.vqs.1.codebook"} <= set(keys)
    for k in keys:
        assert torch.equal(s0[k], s1[k]), k
    assert bool(s0["vq_ema.initialized"]) and bool(s0["vq_grad.initialized"])
    # the all-reduced refinement on two shards is KMeans's refinement on their concatenation
    assert torch.allclose(s0["vq_ema.codebook"], s0["one_process_refined"], atol=1e-5)
    # training moved the codebooks (equality is not the trivial "nothing happened")
    torch.manual_seed(0)
    sys.path.insert(0, str(worker.parent))
    from ddp_worker import Net

    fresh = Net().state_dict()
    assert not torch.equal(fresh["vq_ema.codebook"], s0["vq_ema.codebook"])
    assert not torch.equal(fresh["vq_grad.codebook"], s0["vq_grad.codebook"])
