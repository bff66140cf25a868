"""Training loop for the image and audio tokenizers: single process or ``torchrun`` (DDP).

    from vq_tokenizers.train import TrainConfig, train_tokenizer
    report = train_tokenizer(TrainConfig(kind="image", data="imgs/", out="runs/img", steps=2000))

    torchrun --nproc_per_node 2 -m vq.cli train-tokenizer image --data imgs/ --out runs/img

Every ``checkpoint_every`` steps (and at the end) rank 0 writes ``ckpt-<step>.safetensors``: the
model and Adam tensors, with the configs, step, history and optimizer hyper-parameters as JSON
metadata, plus the RNG states (torch, each rank's data generator) and the quantizer layers' state
outside their state dicts (sampling generator, ring and init buffers). A new run on the same
``out`` resumes from the newest readable checkpoint (a damaged newer one is skipped with a
warning), and a single-process run killed and resumed equals an uninterrupted one tensor for
tensor. At the end rank 0 writes ``report.json`` (config, history, held-out metrics per number of stages kept) and PNG plots:
``loss.png``, ``utilization.png`` (per stage over time), ``reconstructions.png`` (images) or
``spectrograms.png`` (audio).

DDP: gloo on CPU, NCCL on GPU; ``broadcast_buffers=False`` — the quantizer layers keep their
codebooks identical themselves (see :mod:`vq_tokenizers.layers`). Each rank draws its own batches.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vq.codebook._integrity import read_safetensors, write_safetensors
from vq.codebook.checks import require_choice, require_number
from vq.codebook.metrics import used_fraction
from vq.outputs import OutputKind, check_out_dir, mark_output
from vq_tokenizers.audio import AudioCodec, AudioCodecConfig, si_snr
from vq_tokenizers.data import AudioFolder, ImageFolder
from vq_tokenizers.image import VQVAE, ImageTokenizerConfig, psnr
from vq_tokenizers.layers import QuantizerSpec

__all__ = ["TrainConfig", "train_tokenizer", "build_model", "load_checkpoint", "evaluate"]

log = logging.getLogger(__name__)

_KINDS = ("image", "audio")


@dataclass(frozen=True)
class TrainConfig:
    """kind: ``image`` | ``audio``; data: training folder; heldout: optional evaluation folder;
    out: run directory; model: ImageTokenizerConfig / AudioCodecConfig fields (dict);
    crop: image crop size; segment: audio segment length in seconds; eval_batches: held-out
    batches (fixed seed) for the final metrics; time_budget_s: stop early after this many seconds."""

    kind: str
    data: str
    out: str
    heldout: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    crop: int = 64
    segment: float = 0.5
    checkpoint_every: int = 200
    log_every: int = 10
    eval_batches: int = 8
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        require_choice("kind", self.kind, _KINDS)
        for name in ("steps", "batch_size", "crop", "checkpoint_every", "log_every", "eval_batches"):
            v = getattr(self, name)  # not require_int: a non-int here has always been a ValueError
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        require_number("lr", self.lr, 0.0, low_open=True)
        require_number("segment (seconds)", self.segment, 0.0, low_open=True)
        build_model(self)  # validates the model fields early (cheap: small modules)

    def model_config(self) -> ImageTokenizerConfig | AudioCodecConfig:
        cls = ImageTokenizerConfig if self.kind == "image" else AudioCodecConfig
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(self.model) - known
        if unknown:
            raise ValueError(f"unknown {self.kind} model fields {sorted(unknown)}; known: {sorted(known)}")
        fields = dict(self.model)
        if isinstance(fields.get("quantizer"), dict):  # partial spec: over the model's default one
            fields["quantizer"] = QuantizerSpec.from_dict(fields["quantizer"], defaults=cls().quantizer)
        return cls(**fields)


def build_model(cfg: TrainConfig) -> nn.Module:
    mc = cfg.model_config()
    return VQVAE(mc) if cfg.kind == "image" else AudioCodec(mc)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# -- checkpoints -------------------------------------------------------------------------------
# Tensor names: ``model.<state dict key>``, ``optim.<param id>.<name>`` (Adam), and for an exact
# resume ``rng.torch`` (+ ``rng.cuda``) and ``rng.data.<rank>`` (generator states, uint8) and
# ``layer.<module name>.<key>`` (each quantizer's ``resume_state()``: state outside the state dict).
def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict,
                     resume: dict[str, Tensor]) -> None:  # fmt: skip
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for name, v in st.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(v).detach().contiguous().cpu()
    tensors.update({k: v.contiguous().cpu() for k, v in resume.items()})
    meta = dict(meta, param_groups=osd["param_groups"])
    # per-tensor checksums, written to a temp file and renamed (vq.codebook._integrity)
    write_safetensors(path, tensors, {"meta": json.dumps(_jsonable(meta))})


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """(JSON metadata, every tensor) of a checkpoint; ``ValueError`` naming the file when it is
    damaged (truncated, unreadable header, a checksum mismatch, missing metadata)."""
    try:
        tensors, metadata = read_safetensors(path)  # checksums verified where the file has them
        meta = json.loads(metadata["meta"])
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or "history" not in meta:
            raise ValueError("metadata lacks 'step' or 'history'")
    except (OSError, KeyError, ValueError) as e:  # json and checksum errors are ValueErrors
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from e
    return meta, tensors


def _apply_checkpoint(meta: dict, tensors: dict[str, Tensor], model: nn.Module, opt: torch.optim.Optimizer | None) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if opt is not None:
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_checkpoint(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Load model (and optimizer) tensors in place; return the checkpoint's JSON metadata."""
    meta, tensors = _read_checkpoint(Path(path))
    _apply_checkpoint(meta, tensors, model, opt)
    return meta


def _newest_readable_checkpoint(out: Path) -> tuple[Path, dict, dict[str, Tensor]] | None:
    """The newest checkpoint of ``out`` that reads whole; damaged newer ones are skipped with a
    warning. None when there is none; ``ValueError`` when every one is damaged."""
    ckpts = sorted(out.glob("ckpt-*.safetensors"), reverse=True)
    for path in ckpts:
        try:
            return (path, *_read_checkpoint(path))
        except ValueError as e:
            log.warning("%s is damaged, falling back to the previous checkpoint (%s)", path, e)
    if ckpts:
        raise ValueError(f"no readable checkpoint in {out}: {', '.join(p.name for p in ckpts)} are damaged")
    return None


def _layers_with_resume_state(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "resume_state")]


def _gather_state(state: Tensor, world: int, device: torch.device) -> list[Tensor]:
    """Every rank's copy of a same-sized uint8 state tensor (collective: all ranks call it)."""
    if world == 1:
        return [state]
    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(state, device=dev) for _ in range(world)]
    dist.all_gather(parts, state.to(dev))
    return [p.cpu() for p in parts]


def _resume_tensors(model: nn.Module, gen: torch.Generator, world: int, device: torch.device) -> dict[str, Tensor]:
    """RNG and layer state for an exact resume (the layers' is rank 0's: it re-seeds for all)."""
    out = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    for r, st in enumerate(_gather_state(gen.get_state(), world, device)):
        out[f"rng.data.{r}"] = st
    for name, m in _layers_with_resume_state(model):
        out.update({f"layer.{name}.{k}": v for k, v in m.resume_state().items()})
    return out


def _restore_resume_tensors(path: Path, tensors: dict[str, Tensor], model: nn.Module, gen: torch.Generator,
                            rank: int, device: torch.device) -> bool:  # fmt: skip
    """Restore what :func:`_resume_tensors` stored; False (the caller reseeds) for a checkpoint
    written without it (older code) or by a run with fewer ranks."""
    if "rng.torch" not in tensors or f"rng.data.{rank}" not in tensors:
        log.warning("%s has no RNG state for rank %d: the resumed run will not repeat an uninterrupted one", path, rank)
        return False
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    gen.set_state(tensors[f"rng.data.{rank}"])
    for name, m in _layers_with_resume_state(model):
        prefix = f"layer.{name}."
        m.load_resume_state({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return True


# -- evaluation --------------------------------------------------------------------------------
def _stage_options(model: nn.Module) -> list[int | None]:
    spec = model.config.quantizer
    return list(range(1, spec.stages + 1)) if spec.kind in ("rvq", "grvq") else [None]


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Tensor]) -> list[dict[str, float]]:
    """Held-out metrics for each number of kept stages: PSNR (images) or SI-SNR + mel distance
    (audio), bitrate / bits per latent position, and per-stage used fraction over all batches."""
    was_training = model.training
    model.eval()
    rows = []
    spec = model.config.quantizer
    k = spec.codebook_size if spec.kind != "fsq" else math.prod(spec.fsq_levels)
    for n in _stage_options(model):
        kw = {} if n is None else {"n_stages": n}
        metric, mel, codes = [], [], []
        for x in batches:
            out = model(x, **kw)
            if isinstance(model, VQVAE):
                metric.append(psnr(x, out.reconstruction))
            else:
                metric.append(si_snr(out.reconstruction, x))
                mel.append(float(model.mel.distance(out.reconstruction, x)))
            codes.append(out.quant.codes.reshape(-1, out.quant.codes.shape[-1] if spec.kind in ("rvq", "grvq") else 1))
        allc = torch.cat(codes)  # (positions, stages)
        used = [used_fraction(c[c >= 0], k) if bool((c >= 0).any()) else 0.0 for c in allc.T]  # -1: dropped
        row = {"stages": n or 1, "used_fraction_per_stage": used}
        if isinstance(model, VQVAE):
            row["psnr_db"] = sum(metric) / len(metric)
            row["bits_per_position"] = spec.bits_per_frame(n)
        else:
            row.update(si_snr_db=sum(metric) / len(metric), mel_distance=sum(mel) / len(mel), bitrate_bps=model.bitrate(n))
        rows.append(row)
    model.train(was_training)
    return rows


# -- plots -------------------------------------------------------------------------------------
def _plots(out: Path, history: list[dict], model: nn.Module, sample: Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["loss"] for h in history], label="total")
    ax.plot(steps, [h["recon_loss"] for h in history], label="reconstruction")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.legend(), fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    used = torch.tensor([h["used_fraction"] for h in history])  # (logs, stages)
    for j in range(used.shape[1]):
        ax.plot(steps, used[:, j].tolist(), label=f"stage {j}")
    ax.set_xlabel("step"), ax.set_ylabel("batch used fraction"), ax.set_ylim(0, 1.02)
    if used.shape[1] <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "utilization.png", dpi=100), plt.close(fig)
    model.eval()
    with torch.no_grad():
        rec = model(sample).reconstruction
        mels = [model.mel(w[None])[0].cpu() for w in (sample[0], rec[0])] if isinstance(model, AudioCodec) else []
    sample, rec = sample.cpu(), rec.cpu()
    if isinstance(model, VQVAE):
        n = min(6, sample.shape[0])
        fig, axes = plt.subplots(2, n, figsize=(2 * n, 4), squeeze=False)
        for i in range(n):
            for r, img in enumerate((sample[i], rec[i].clamp(0, 1))):
                axes[r, i].imshow(img.permute(1, 2, 0).numpy()), axes[r, i].axis("off")
        fig.suptitle("top: input, bottom: reconstruction"), fig.tight_layout()
        fig.savefig(out / "reconstructions.png", dpi=100), plt.close(fig)
    else:
        fig, axes = plt.subplots(2, 1, figsize=(7, 5))
        for ax, mel, title in zip(axes, mels, ("input", "reconstruction")):
            ax.imshow(mel.numpy(), origin="lower", aspect="auto"), ax.set_title(f"log-mel: {title}")
        fig.tight_layout(), fig.savefig(out / "spectrograms.png", dpi=100), plt.close(fig)


# -- training ----------------------------------------------------------------------------------
def _setup_distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = world > 1 and not dist.is_initialized()
    if created:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), created
    return rank, world, torch.device("cpu"), created


def _dataset(cfg: TrainConfig, folder: str, model: nn.Module) -> ImageFolder | AudioFolder:
    if cfg.kind == "image":
        f = model.config.downsample
        if cfg.crop % f:
            raise ValueError(f"crop={cfg.crop} must be a multiple of the downsampling factor {f}")
        return ImageFolder(folder, cfg.crop)
    sr, hop = model.config.sample_rate, model.hop
    seg = max(hop, int(round(cfg.segment * sr / hop)) * hop)  # a multiple of the hop
    return AudioFolder(folder, sr, seg)


#: the marker kind of a run directory (vq.outputs): a directory holding it is a run to resume
RUN_OUTPUT = OutputKind(kind="tokenizer-run", command="vq train-tokenizer",
                        files=("ckpt-*", "report.json", "loss.png", "utilization.png", "reconstructions.png",
                               "spectrograms.png"))


def train_tokenizer(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) and return the final report (also written to ``out/report.json`` on rank 0).

    ``cfg.out`` must be new, empty or a previous run directory of this function (its marker, see
    :mod:`vq.outputs`); a file, a path below a file, an unwritable location or a directory holding
    other files is refused (``ValueError``) before anything starts."""
    from tqdm import tqdm

    out = Path(cfg.out)
    check_out_dir(out, RUN_OUTPUT, overwrite=False, resume=True, sibling=False)
    rank, world, device, created_group = _setup_distributed()
    if rank == 0:
        mark_output(out, RUN_OUTPUT)
    else:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    data = _dataset(cfg, cfg.data, model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, history = 0, []
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * rank)  # each rank its own batches
    found = _newest_readable_checkpoint(out)
    if found is not None:
        ckpt, meta, tensors = found
        _apply_checkpoint(meta, tensors, model, opt)
        start, history = meta["step"], meta["history"]
        if not _restore_resume_tensors(ckpt, tensors, model, gen, rank, device):
            gen.manual_seed(cfg.seed + 7919 * rank + 104729 * start)
        del tensors
        log.info("resumed from %s at step %d", ckpt, start)
    net = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc=f"train {cfg.kind}")
    t0, seen, last_t = time.perf_counter(), 0, time.perf_counter()
    meta_base = {"config": _jsonable(cfg), "model_config": _jsonable(model.config)}
    step = start
    for step in bar:
        x = data.batch(cfg.batch_size, gen).to(device)
        o = net(x)
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        opt.step()
        seen += x.shape[0] * world
        done = step + 1
        budget_hit = cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s
        if world > 1:  # every rank stops at the same step
            flag = torch.tensor(float(budget_hit), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            budget_hit = bool(flag)
        if done % cfg.log_every == 0 or done == cfg.steps or budget_hit:
            now = time.perf_counter()
            rate = seen / max(now - last_t, 1e-9)
            seen, last_t = 0, now
            h = {
                "step": done, "loss": float(o.loss.detach()), "recon_loss": float(o.recon_loss.detach()),
                "used_fraction": o.quant.stats.used_fraction.tolist(),
                "perplexity": o.quant.stats.perplexity.tolist(), "samples_per_s": rate,
            }  # fmt: skip
            history.append(h)
            bar.set_postfix(loss=f"{h['loss']:.4f}", used=f"{min(h['used_fraction']):.2f}", sps=f"{rate:.1f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or budget_hit:
            resume = _resume_tensors(model, gen, world, device)  # every rank: it gathers
            if rank == 0:
                meta = dict(meta_base, step=done, history=history)
                _save_checkpoint(out / f"ckpt-{done:08d}.safetensors", model, opt, meta, resume)
        if budget_hit:
            log.info("time budget of %.0f s reached at step %d", cfg.time_budget_s, done)
            break
    bar.close()
    final_step = history[-1]["step"] if history else start
    report: dict[str, Any] = dict(meta_base, steps_done=final_step, world_size=world, train_seconds=time.perf_counter() - t0)
    if rank == 0:
        report["history"] = history
        eval_data = _dataset(cfg, cfg.heldout, model) if cfg.heldout else data
        egen = torch.Generator().manual_seed(12345)
        batches = [eval_data.batch(cfg.batch_size, egen).to(device) for _ in range(cfg.eval_batches)]
        report["heldout" if cfg.heldout else "train_eval"] = evaluate(model, batches)
        (out / "report.json").write_text(json.dumps(_jsonable(report), indent=1))
        _plots(out, history, model, batches[0])
        log.info("report written to %s", out / "report.json")
    if world > 1:
        dist.barrier()
    if created_group:  # a process leaving with gloo's threads alive aborted ("terminate called ...") under load
        del net  # DDP's reducer holds the process group: free both here, not at interpreter exit
        gc.collect()
        dist.destroy_process_group()
    return report
