"""CLI subcommands of the weight-compression area: ``compress``, ``eval``, ``generate``, ``demo``,
``verify``.

Registered by ``vq.cli`` through :func:`register`. Results go to stdout (they are the command's
output); progress and diagnostics go through ``logging`` / tqdm on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger(__name__)

DEFAULT_METHOD = "gptvq"
DEFAULT_CALIB_WINDOWS = 32


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def register(sub: argparse._SubParsersAction) -> None:
    """Add compress / eval / generate / demo / verify to the ``vq`` parser."""
    from vq.weights.pipeline import METHODS

    p = sub.add_parser("compress", help="compress an LLM's Linear weights (GPTVQ / GPTQ / RTN)")
    p.add_argument("model", nargs="?", default="smollm2",
                   help="transformers folder, .gguf file, or 'smollm2' (default)")
    p.add_argument("--out", required=True, help="output directory")
    _add_compress_args(p, sorted(METHODS))
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("eval", help="perplexity over fixed 512-token windows")
    p.add_argument("model", help="compressed directory, transformers folder, .gguf file or 'smollm2'")
    p.add_argument("--text", default="pydoc", help="text file, or 'pydoc' (its held-out 20%%; default)")
    p.add_argument("--max-windows", type=_positive_int, default=None, help="evaluate only the first N >= 1 windows")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="generate text with a (compressed) model")
    p.add_argument("model", help="compressed directory, transformers folder, .gguf file or 'smollm2'")
    p.add_argument("prompt", help="text to continue (not empty)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=40)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--repetition-penalty", type=float, default=1.2, help="greedy decoding's repetition penalty")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="compress SmolLM2-135M to ~2 bits, evaluate, reload, generate")
    p.add_argument("--model", default="smollm2", help="model to compress (default: the built-in smollm2)")
    p.add_argument("--out", default="demo_out/smollm2-gptvq-2bit", help="output directory")
    _add_compress_args(p, sorted(METHODS))
    p.add_argument("--eval-text", default="pydoc", help="evaluation text file, or 'pydoc' (its held-out 20%%)")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--prompt", default="The Python programming language is")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("verify", help="check every stored tensor of a model directory or codec file against its checksum")
    p.add_argument("path", help="compressed model directory, or a .safetensors file (codec, model)")
    p.set_defaults(func=cmd_verify)


def _add_compress_args(p: argparse.ArgumentParser, methods: list[str]) -> None:
    p.add_argument("--method", default=DEFAULT_METHOD, choices=None,
                   help=f"solver: {', '.join(methods)} (default {DEFAULT_METHOD})")
    p.add_argument("--bits", type=int, default=2, help="target bits per weight (code bits; default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue a killed run from <out>.partial/")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that an earlier `vq compress` / `vq demo` wrote (only its files)")
    p.add_argument("--text", dest="calib_text", default="pydoc",
                   help="calibration text file, or 'pydoc' (its first 80%%; default)")
    p.add_argument("--calib-windows", type=int, default=DEFAULT_CALIB_WINDOWS,
                   help=f"512-token calibration windows (default {DEFAULT_CALIB_WINDOWS})")
    p.add_argument("--group-size", type=_positive_int, default=None,
                   help="rtn/gptq: input columns per (scale, zero) grid (>= 1; small groups cost 24 bits each)")
    p.add_argument("--weights-per-codebook", type=int, default=None, help="gptvq: target weights per codebook tile")
    p.add_argument("--dim", type=int, default=None, help="gptvq: vector length d")
    p.add_argument("--index-bits", type=int, default=None, help="gptvq: bits per code (K = 2**index_bits)")
    p.add_argument("--block-cols", type=int, default=None,
                   help="gptvq: input columns per codebook tile (rows per tile = weights per codebook / this)")
    p.add_argument("--act-order", action="store_true", help="gptq: visit columns by decreasing diag(H)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep layers matching this fnmatch pattern (name within the block, e.g. 'mlp.down_proj') "
                        "dense; repeatable, added to the default routers/gates ('*.gate', '*_gate')")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _solver_config(args: argparse.Namespace):
    from vq.weights.pipeline import METHODS, method_config

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; known: {sorted(METHODS)}")
    over: dict[str, Any] = {}
    if args.group_size is not None:
        if args.method == "gptvq":
            raise ValueError("--group-size is rtn/gptq's columns per grid; for gptvq use --weights-per-codebook")
        over["group_size"] = args.group_size
    if args.method == "gptvq":
        if getattr(args, "weights_per_codebook", None) is not None:
            over["weights_per_codebook"] = args.weights_per_codebook
        if args.dim is not None:
            over["dim"] = args.dim
        if args.index_bits is not None:
            over["index_bits"] = args.index_bits
        if getattr(args, "block_cols", None) is not None:
            over["block_cols"] = args.block_cols
    elif any(getattr(args, a, None) is not None for a in ("dim", "index_bits", "block_cols", "weights_per_codebook")):
        raise ValueError("--dim / --index-bits / --block-cols / --weights-per-codebook apply to --method gptvq only")
    if args.act_order:
        if args.method != "gptq":
            raise ValueError("--act-order applies to --method gptq only")
        over["act_order"] = True
    return method_config(args.method, args.bits, **over)


def _compress_to(args: argparse.Namespace, model_spec: str, out: Path, model=None, tokenizer=None):
    """Shared by compress and demo: returns (CompressedModel, seconds)."""
    from vq.outputs import check_out_dir
    from vq.weights import data, format, hf
    from vq.weights.pipeline import DEFAULT_SKIP, CompressConfig, compress

    config = CompressConfig(solver=_solver_config(args), seed=args.seed,  # validates before loading
                            skip=DEFAULT_SKIP + tuple(args.skip))
    check_out_dir(out, format.MODEL_OUTPUT, overwrite=args.overwrite)  # before any work (vq.outputs)
    tokenizer = tokenizer or hf.load_tokenizer(model_spec)
    calib = data.calibration_windows(tokenizer, args.calib_text, n=args.calib_windows)
    t0 = time.perf_counter()
    model = model or hf.load_model(model_spec)
    ckpt = out.with_name(out.name + ".partial")
    if args.resume and not (ckpt / "state.json").exists():
        log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt)
    result = compress(model, config, calib, checkpoint_dir=ckpt, resume=args.resume)
    seconds = time.perf_counter() - t0
    extra = {"source_model": str(model_spec), "calibration": {"text": str(args.calib_text), "windows": len(calib),
             "seq_len": calib.shape[1]}, "report": result.report, "compress_seconds": seconds}
    format.save(out, result.model, result.layers, config.to_dict(), tokenizer=tokenizer,
                dense_dtype=config.torch_dense_dtype, extra=extra, overwrite=args.overwrite)
    shutil.rmtree(ckpt, ignore_errors=True)
    return result, seconds


def cmd_compress(args: argparse.Namespace) -> int:
    _threads(args)
    out = Path(args.out)
    result, seconds = _compress_to(args, args.model, out)
    rep = result.report
    _out(f"compressed {args.model} with {args.method} in {seconds:.0f} s -> {out}")
    _out(f"bits/weight (quantized Linears, all-in): {rep['bits_per_weight']:.4f} "
         f"({rep['nbits'] / 8 / 2**20:.2f} MiB for {rep['weights']:,} weights)")
    _out(f"size on disk: {_dir_size(out) / 2**20:.2f} MiB")
    return 0


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _load_any(spec: str):
    """(model, tokenizer, bits_per_weight) for a compressed dir or an uncompressed model."""
    from vq.weights import format, hf

    if Path(spec).is_dir() and format.is_compressed_dir(spec):
        cfg = format.read_json(Path(spec) / format.CONFIG_FILE)
        return format.load(spec), hf.load_tokenizer(spec), float(cfg["bits"]["bits_per_weight"])
    model = hf.load_model(spec)
    w = next(iter(hf.block_linears(hf.decoder_blocks(model)[0]).values())).weight
    return model, hf.load_tokenizer(spec), float(w.element_size() * 8)


def _positive_int(value: str) -> int:
    """argparse type of a count flag: an int >= 1 (argparse names the flag in its error)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _evaluate(model, tokenizer, text: str, max_windows: int | None) -> dict[str, Any]:
    from vq.weights import data

    if max_windows is not None and max_windows < 1:
        raise ValueError(f"the number of evaluation windows must be >= 1, got {max_windows}")
    win = data.eval_windows(tokenizer, text)
    if max_windows is not None:
        win = win[:max_windows]
    t0 = time.perf_counter()
    ppl, tokens = data.perplexity(model, win)
    return {"perplexity": ppl, "tokens": tokens, "windows": len(win), "seconds": time.perf_counter() - t0}


def cmd_verify(args: argparse.Namespace) -> int:
    """OK per file, or a ``ValueError`` naming the first file and tensor that does not match."""
    from vq.codebook._integrity import verify_file

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .safetensors files")
    for f in files:
        n = verify_file(f)
        _out(f"OK {f}: {n} tensors match their checksums" if n is not None
             else f"UNCHECKED {f}: no checksums (written before vq stored them)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _threads(args)
    model, tok, bpw = _load_any(args.model)
    res = {"model": args.model, "text": args.text, **_evaluate(model, tok, args.text, args.max_windows),
           "bits_per_weight": bpw}
    if args.json:
        _out(json.dumps(res))
    else:
        _out(f"{args.model}: perplexity {res['perplexity']:.3f} over {res['tokens']} tokens "
             f"({res['windows']} windows of 512) on {args.text}; {bpw:.3f} bits/weight")
    return 0


def _generate(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool = False,
              repetition_penalty: float = 1.2) -> str:
    """Greedy continuation of ``prompt`` (through the chat template when ``chat``)."""
    import torch

    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat: this tokenizer has no chat template")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:  # (1, 0): nothing to continue
        raise ValueError(f"the prompt {prompt!r} is empty after tokenization; give some text to continue")
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, repetition_penalty=repetition_penalty,
                             pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text.strip() if chat else prompt + text


def cmd_generate(args: argparse.Namespace) -> int:
    from vq.cli import UsageError

    if not args.prompt:  # refused before any model work (a BOS-only start is not every tokenizer's)
        raise UsageError("the prompt is empty; give some text to continue (e.g. vq generate MODEL 'Once upon')")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    _threads(args)
    model, tok, _ = _load_any(args.model)
    _out(_generate(model, tok, args.prompt, args.max_new_tokens, args.chat, args.repetition_penalty))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Compress the default model, evaluate it beside fp32, reload from disk, generate, summarise."""
    from vq.outputs import check_out_dir
    from vq.weights import format, hf

    _threads(args)
    t_all = time.perf_counter()
    out = Path(args.out)
    check_out_dir(out, format.MODEL_OUTPUT, overwrite=args.overwrite)  # before the model loads (vq.outputs)
    spec = args.model
    t0 = time.perf_counter()
    tok = hf.load_tokenizer(spec)
    fp32 = hf.load_model(spec)
    t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in fp32.parameters())
    what = " (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to fp32)" if spec == "smollm2" else ""
    _out(f"loaded {spec}{what} in {t_load:.0f} s")
    ev_fp32 = _evaluate(fp32, tok, args.eval_text, args.eval_windows)
    _out(f"fp32 perplexity {ev_fp32['perplexity']:.3f} ({ev_fp32['tokens']} tokens, {ev_fp32['seconds']:.0f} s)")
    text_fp32 = _generate(fp32, tok, args.prompt, 40)
    result, t_comp = _compress_to(args, spec, out, model=fp32, tokenizer=tok)  # compresses fp32 in place
    del fp32, result
    _out(f"compressed with {args.method} {args.bits}-bit in {t_comp:.0f} s -> {out}")
    t0 = time.perf_counter()
    q = format.load(out)
    t_reload = time.perf_counter() - t0
    ev_q = _evaluate(q, tok, args.eval_text, args.eval_windows)
    bpw = float(format.read_json(out / format.CONFIG_FILE)["bits"]["bits_per_weight"])
    t0 = time.perf_counter()
    text = _generate(q, tok, args.prompt, 40)
    t_gen = time.perf_counter() - t0
    _out("")
    _out(f"greedy continuation of {args.prompt!r}")
    _out(f"  fp32:                     {text_fp32!r}")
    _out(f"  {args.method} {args.bits}-bit, reloaded:  {text!r}")
    _out("")
    rows = [
        ("model", "bits/weight (Linears)", "size on disk", "perplexity", "time"),
        ("fp32" + (" (dequantized Q4_1)" if spec == "smollm2" else ""), "32", f"{n_params * 4 / 2**20:.1f} MiB (fp32 tensors)",
         f"{ev_fp32['perplexity']:.2f}", f"eval {ev_fp32['seconds']:.0f} s"),
        (f"{args.method} {args.bits}-bit", f"{bpw:.3f}", f"{_dir_size(out) / 2**20:.1f} MiB (dir)",
         f"{ev_q['perplexity']:.2f} ({ev_q['perplexity'] / ev_fp32['perplexity']:.2f}x)",
         f"compress {t_comp:.0f} s, reload {t_reload:.0f} s, eval {ev_q['seconds']:.0f} s, generate {t_gen:.0f} s"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        _out(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            _out("-+-".join("-" * w for w in widths))
    where = "the pydoc held-out split" if args.eval_text == "pydoc" else str(args.eval_text)
    _out(f"\nperplexity on {where} ({ev_q['tokens']} tokens, 512-token windows); "
         f"total demo time {time.perf_counter() - t_all:.0f} s")
    return 0
