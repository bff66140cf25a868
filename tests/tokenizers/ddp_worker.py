"""Two-rank gloo worker for test_ddp.py (run as a script: ``python ddp_worker.py OUT_DIR``).

Each rank trains a tiny autoencoder whose bottleneck holds an EMA VectorQuantizer (k-means
init over 3 batches, re-seeding every 2 steps), a gradient-mode one and a ResidualVQ, on its own
data, under DDP with ``broadcast_buffers=False`` (so only the layers' own synchronisation can
keep the codebooks equal). Midway, rank 0 alone runs an eval forward and a ``no_grad``
training-mode forward; a hang there would time the test out. At the end every rank refines the
EMA codebook on its own shard (``refine_codebook`` with ELBG moves), and computes the same
refinement in one process on both shards (``one_process_refined``). Codebooks go to OUT_DIR.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from vq.codebook import KMeans
from vq_tokenizers import ResidualVQ, VectorQuantizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(8, 8), nn.Linear(8, 8)
        self.vq_ema = VectorQuantizer(8, 32, init_max_batches=3, reseed_every=2, reseed_threshold=0.5)
        self.vq_grad = VectorQuantizer(8, 32, update="gradient", gradient="rotation", init_max_batches=2)
        self.rvq = ResidualVQ(8, 16, 2, quantizer_dropout=0.5, init="data")

    def forward(self, x):
        z = self.enc(x)
        a, b, c = self.vq_ema(z), self.vq_grad(z), self.rvq(z)
        return (self.dec(a.quantized + b.quantized + c.quantized) - x).square().mean() + a.loss + b.loss + c.loss


def worker(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)  # identical init
    model = DDP(Net(), broadcast_buffers=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    shift = 3.0 * rank  # ranks see different regions: local updates alone would diverge

    def step():
        loss = model(torch.randn(64, 8, generator=g) + shift)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(6):
        step()
    if rank == 0:  # one rank evaluates alone: must not enter a collective
        model.eval()
        with torch.no_grad():
            model(torch.randn(64, 8))
        model.train()
        with torch.no_grad():
            model(torch.randn(64, 8))
    for _ in range(6):
        step()
    with torch.no_grad():  # post-training refinement on each rank's own shard, with ELBG moves
        z = model.module.enc(torch.randn(256, 8, generator=g) + shift)
    start = model.module.vq_ema.codebook.clone()
    model.module.vq_ema.refine_codebook(z, iters=4, split=0.25)
    state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}
    shards = [torch.empty_like(z) for _ in range(2)]
    dist.all_gather(shards, z)  # the reference: one process's KMeans on both shards
    one = KMeans(32, niter=4, init=start, empty="keep", split=0.25).fit(torch.cat(shards))
    state["one_process_refined"] = one.centroids
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    dist.barrier()  # both ranks done before teardown: a rank tearing gloo down early aborted its peer under load
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(worker, args=(sys.argv[1],), nprocs=2, join=True)
