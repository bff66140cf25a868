"""Reports of ``vq bench utilization``: ``results.json``, PNG plots, one self-contained
``report.html`` (plots embedded as base64, tables sortable by a few lines of inline script) and a
text summary computed from the numbers.

    write_report(results, "out/")       # -> {"results": ..., "html": ..., "plots": [...], "summary": ...}
    results = read_results("out/results.json")   # schema-checked

Plots (all from the results dict, so a report can be rebuilt from results.json alone):
``used_fraction.png`` (held-out and fit used fraction vs codebook size), ``usage_curves.png``
(sorted code-usage curves, log scale, one panel per size), ``rate_distortion.png`` (held-out MSE
vs code bits per vector), ``stages.png`` (per-stage used fraction, and MSE after each stage of
the residual families).
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from vq.bench.utilization import SCHEMA

__all__ = ["PLOTS", "check_results", "read_results", "summarize", "write_report", "write_results"]

log = logging.getLogger(__name__)

PLOTS = ("used_fraction.png", "usage_curves.png", "rate_distortion.png", "stages.png")
_RUN_KEYS = {
    "quantizer": str, "label": str, "source": str, "asked_sizes": list, "size": int, "size_note": str,
    "codebooks": int, "ks": list, "joint": bool, "params": dict, "notes": list, "bits_per_vector": float,
    "overhead_bits": int, "all_in_bits_per_vector": float, "fit_seconds": float,
    "encode_vectors_per_second": float, "heldout": dict, "fit": dict,
}
_SPLIT_KEYS = ("used_fraction", "perplexity", "perplexity_ratio", "entropy_bits", "log2_k", "dead_codes",
               "uniform_used_fraction", "mse", "stages")
_STAGE_KEYS = ("stage", "name", "k", "used", "used_fraction", "perplexity", "entropy_bits", "n_dead")
_TOP_KEYS = ("schema", "created", "commit", "command", "config", "data", "machine", "total_seconds", "runs", "skipped")


def check_results(res: Any) -> dict[str, Any]:
    """Validate a results dict against the schema of docs/formats.md; returns it."""
    if not isinstance(res, dict):
        raise ValueError(f"results must be a JSON object, got {type(res).__name__}")
    if res.get("schema") != SCHEMA:
        raise ValueError(f"results schema is {res.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in _TOP_KEYS if k not in res]
    if missing:
        raise ValueError(f"results lack {missing}")
    for i, run in enumerate(res["runs"]):
        for k, t in _RUN_KEYS.items():
            if k not in run:
                raise ValueError(f"runs[{i}] lacks {k!r}")
            ok = isinstance(run[k], (int, float)) if t is float else isinstance(run[k], t)
            if not ok or (t is int and isinstance(run[k], bool)):
                raise ValueError(f"runs[{i}].{k} should be {t.__name__}, got {type(run[k]).__name__}")
        for split in ("heldout", "fit"):
            for k in _SPLIT_KEYS:
                if k not in run[split]:
                    raise ValueError(f"runs[{i}].{split} lacks {k!r}")
            if len(run[split]["stages"]) != run["codebooks"]:
                raise ValueError(f"runs[{i}].{split}.stages has {len(run[split]['stages'])} entries, codebooks = {run['codebooks']}")
            for s in run[split]["stages"]:
                for k in _STAGE_KEYS:
                    if k not in s:
                        raise ValueError(f"runs[{i}].{split}.stages lacks {k!r}")
        if "usage_curves" not in run["heldout"]:
            raise ValueError(f"runs[{i}].heldout lacks 'usage_curves'")
    return res


def _finite(o: Any) -> Any:
    """JSON has no inf / nan: write them as strings "inf" / "nan" (SQNR of an exact reconstruction)."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def write_results(res: dict[str, Any], path: str | Path) -> Path:
    """Write results.json (atomic rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(check_results(res)), separators=(",", ":"), allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return check_results(res)


# -- plots ---------------------------------------------------------------------------------------
def _is_peer(run: dict[str, Any]) -> bool:
    return run["source"].startswith("peer")


def _by_quantizer(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["quantizer"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["size"])
    return out


def _plots(res: dict[str, Any], out: Path, dpi: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    groups = _by_quantizer(runs)
    cmap = plt.get_cmap("tab20")
    colors = {q: cmap(i % 20) for i, q in enumerate(groups)}
    title = f"{res['data']['name']} (d={res['data']['dim']})"
    paths = []

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for q, rs in groups.items():
        xs = [r["size"] for r in rs]
        ls = "--" if _is_peer(rs[0]) else "-"
        ax.plot(xs, [r["heldout"]["used_fraction"] for r in rs], ls, marker="o", color=colors[q], label=q)
        ax.plot(xs, [r["fit"]["used_fraction"] for r in rs], ":", marker=".", color=colors[q], alpha=0.5)
    n_held = res["data"]["n_heldout"]
    ks = sorted({r["size"] for r in runs})
    if ks:
        grid = [2 ** (math.log2(ks[0]) + i * (math.log2(ks[-1]) - math.log2(ks[0])) / 50) for i in range(51)]
        ax.plot(grid, [-math.expm1(n_held * math.log1p(-1 / g)) if g > 1 else 1.0 for g in grid], color="grey",
                lw=3, alpha=0.3, label=f"uniform use, n={n_held}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("codebook size K (per codebook)")
    ax.set_ylabel("used fraction")
    ax.set_title(f"{title}: used fraction, held-out (solid; peers dashed) and fit (dotted)")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, dpi, out / PLOTS[0]))

    sizes = sorted({a for r in runs for a in r["asked_sizes"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4), squeeze=False)
    for ax, k in zip(axes[0], sizes):
        for r in runs:
            if k not in r["asked_sizes"]:
                continue
            c = r["heldout"]["usage_curves"][0]
            pts = [(x, y) for x, y in zip(c["rank_fraction"], c["share_x_k"]) if y > 0]
            if pts:
                ax.plot(*zip(*pts), "--" if _is_peer(r) else "-", color=colors[r["quantizer"]], label=r["label"], lw=1.2)
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.6, alpha=0.5)
        ax.set_xlabel("code rank / K")
        ax.set_title(f"asked K={k}", fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share x K (1 = uniform; first codebook)")
    fig.suptitle(f"{title}: sorted code usage on held-out data", fontsize=10)
    paths.append(_save(fig, dpi, out / PLOTS[1]))

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for q, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["bits_per_vector"])
        ax.plot([r["bits_per_vector"] for r in rs], [r["heldout"]["mse"] for r in rs], "--" if _is_peer(rs[0]) else "-",
                marker="o", color=colors[q], label=q)
    ax.set_yscale("log")
    ax.set_xlabel("code bits per vector")
    ax.set_ylabel("held-out MSE")
    ax.set_title(f"{title}: rate-distortion")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, dpi, out / PLOTS[2]))

    multi = [r for r in runs if r["codebooks"] > 1 and not r["joint"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in multi:
        st = r["heldout"]["stages"]
        ls = "--" if _is_peer(r) else "-"
        axes[0].plot(range(1, len(st) + 1), [s["used_fraction"] for s in st], ls, marker="o", label=r["label"], lw=1)
        if all("mse_after" in s for s in st):
            axes[1].plot(range(1, len(st) + 1), [s["mse_after"] for s in st], ls, marker="o", label=r["label"], lw=1)
    axes[0].set_xlabel("stage / codebook")
    axes[0].set_ylabel("held-out used fraction")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("stages used")
    axes[1].set_ylabel("held-out MSE (residual families)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    if not multi:
        axes[0].text(0.5, 0.5, "no multi-codebook runs", ha="center", transform=axes[0].transAxes)
    fig.suptitle(f"{title}: per-stage utilization", fontsize=10)
    paths.append(_save(fig, dpi, out / PLOTS[3]))
    return paths


def _save(fig: Any, dpi: int, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# -- summary -------------------------------------------------------------------------------------
def _fmt_k(r: dict[str, Any]) -> str:
    return f"K={r['size']}"


def summarize(res: dict[str, Any]) -> list[str]:
    """Sentences stating what the numbers show (computed, not canned)."""
    runs = res["runs"]
    d = res["data"]
    lines = [f"Data: {d['name']}, d={d['dim']}, {d['n_fit']} fit / {d['n_heldout']} held-out vectors ({d['split']})."]
    if not runs:
        return lines + ["No quantizer ran."]
    groups = _by_quantizer(runs)
    falls, stays = [], []
    for q, rs in groups.items():
        if len(rs) < 2 or rs[0]["joint"]:
            continue
        lo, hi = rs[0], rs[-1]
        a, b = lo["heldout"]["used_fraction"], hi["heldout"]["used_fraction"]
        fa, fb = lo["fit"]["used_fraction"], hi["fit"]["used_fraction"]
        ub = hi["heldout"]["uniform_used_fraction"]
        text = (f"{q}: held-out used fraction {a:.2f} at {_fmt_k(lo)} -> {b:.2f} at {_fmt_k(hi)} "
                f"(uniform use would reach {ub:.2f}; fit split {fa:.2f} -> {fb:.2f})")
        (falls if b < a - 0.05 else stays).append(text)
    if falls:
        lines.append("Utilization falls as K grows for: " + "; ".join(falls) + ".")
    if stays:
        lines.append("Utilization stays within 0.05 as K grows for: " + "; ".join(stays) + ".")
    kmax = max(r["size"] for r in runs if not r["joint"]) if any(not r["joint"] for r in runs) else None
    at = [r for r in runs if kmax in r["asked_sizes"]] if kmax else []
    if at:
        best = max(at, key=lambda r: r["heldout"]["used_fraction"])
        worst = min(at, key=lambda r: r["heldout"]["used_fraction"])
        lines.append(f"At asked K={kmax}: highest held-out used fraction {best['label']} ({best['heldout']['used_fraction']:.2f}, "
                     f"perplexity/K {best['heldout']['perplexity_ratio']:.2f}), lowest {worst['label']} "
                     f"({worst['heldout']['used_fraction']:.2f}, perplexity/K {worst['heldout']['perplexity_ratio']:.2f}).")
    gap = max(runs, key=lambda r: r["fit"]["used_fraction"] - r["heldout"]["used_fraction"])
    g = gap["fit"]["used_fraction"] - gap["heldout"]["used_fraction"]
    if g > 0.02:
        lines.append(f"Largest fit vs held-out gap: {gap['label']} uses {gap['fit']['used_fraction']:.2f} of its codes on "
                     f"fit data but {gap['heldout']['used_fraction']:.2f} on held-out data.")
    for r in runs:
        st = r["heldout"]["stages"]
        if len(st) > 1 and all("mse_after" in s for s in st):
            m = [s["mse_after"] for s in st]
            mono = all(b < a for a, b in zip(m, m[1:]))
            mses = ", ".join(f"{v:.3g}" for v in m)
            used = ", ".join(f"{s['used_fraction']:.2f}" for s in st)
            trend = "falls with every stage" if mono else "does not fall at every stage"
            lines.append(f"{r['label']}: held-out MSE after 1..{len(m)} stages {mses} ({trend}); "
                         f"per-stage used fraction {used}.")
    # Pareto front of (code bits, held-out MSE)
    front = [r for r in runs if not any(o["bits_per_vector"] <= r["bits_per_vector"] and o["heldout"]["mse"] < r["heldout"]["mse"]
                                        and o is not r for o in runs)]
    front.sort(key=lambda r: r["bits_per_vector"])
    lines.append("Rate-distortion front (no other run has lower MSE at no more bits): "
                 + ", ".join(f"{r['label']} ({r['bits_per_vector']:.3g} b, MSE {r['heldout']['mse']:.3g})" for r in front) + ".")
    if res["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{s['quantizer']} at K={s['asked_size']} ({s['reason']})" for s in res["skipped"]) + ".")
    return lines


# -- html ----------------------------------------------------------------------------------------
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    th.dataset.asc = asc ? '1' : '0';
    function key(r) { var t = r.cells[col].dataset.v || r.cells[col].textContent, v = parseFloat(t); return isNaN(v) ? t : v; }
    rows.sort(function (a, b) { var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    rows.forEach(function (r) { tb.appendChild(r); });
  });
});
"""


def _cell(v: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(v, float):
        return f'<td data-v="{v!r}">{html.escape(fmt.format(v))}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _html(res: dict[str, Any], plots: list[Path], summary: list[str]) -> str:
    runs = res["runs"]
    main_rows = [[
        r["label"], r["source"], "/".join(str(a) for a in r["asked_sizes"]), r["size"], r["size_note"],
        float(r["bits_per_vector"]), float(r["all_in_bits_per_vector"]), float(r["heldout"]["used_fraction"]),
        float(r["fit"]["used_fraction"]), float(r["heldout"]["uniform_used_fraction"]), float(r["heldout"]["perplexity_ratio"]), float(r["heldout"]["entropy_bits"]),
        float(r["heldout"]["log2_k"]), r["heldout"]["dead_codes"], float(r["heldout"]["mse"]),
        float(r["heldout"]["sqnr_db"]) if isinstance(r["heldout"].get("sqnr_db"), (int, float)) else str(r["heldout"].get("sqnr_db")),
        float(r["fit_seconds"]), float(r["encode_vectors_per_second"]),
    ] for r in runs]
    main = _table(["quantizer", "source", "asked K", "K", "size note", "code bits/vec", "all-in bits/vec",
                   "used frac (held-out)", "used frac (fit)", "uniform-use ceiling", "perplexity/K", "entropy bits", "log2 K",
                   "dead codes", "MSE", "SQNR dB", "fit s", "encode vec/s"], main_rows)
    stage_rows = [[r["label"], s["stage"], s["name"], s["k"], float(s["used_fraction"]), float(s["perplexity"]),
                   float(s["entropy_bits"]), s["n_dead"], float(s["mse_after"]) if "mse_after" in s else ""]
                  for r in runs if r["codebooks"] > 1 for s in r["heldout"]["stages"]]
    stages = _table(["quantizer", "stage", "name", "K", "used frac", "perplexity", "entropy bits", "dead",
                     "MSE after stage"], stage_rows)
    imgs = "\n".join(
        f'<figure><img alt="{p.name}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.name}</figcaption></figure>" for p in plots)
    notes = sorted({n for r in runs for n in r["notes"]})
    meta = {k: res[k] for k in ("created", "commit", "command", "total_seconds", "machine", "config")}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vq bench utilization: {html.escape(res['data']['name'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1400px}} table{{border-collapse:collapse;font-size:12px;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{cursor:pointer;background:#eee}} td:first-child{{text-align:left}}
img{{max-width:100%}} figure{{margin:1em 0}} pre{{font-size:11px;white-space:pre-wrap}}</style></head><body>
<h1>Codebook utilization: {html.escape(res['data']['name'])}</h1>
<h2>What the data shows</h2>
<ul>{''.join(f'<li>{html.escape(s)}</li>' for s in summary)}</ul>
<p>All figures on the held-out split unless marked; fit-split usage is measured on a subsample of the
same size. Metrics are computed by <code>vq.codebook.metrics</code> from each quantizer's codes, peers
included. For codecs with several codebooks the headline figures are means over codebooks. All-in bits
add the codebook overhead amortised over the held-out vectors. Click a column header to sort.</p>
{''.join(f'<p>Peer note: {html.escape(n)}</p>' for n in notes)}
<h2>Runs</h2>
{main}
<h2>Per stage / codebook</h2>
{stages}
<h2>Plots</h2>
{imgs}
<h2>Run</h2>
<pre>{html.escape(json.dumps(_finite(meta), indent=1))}</pre>
<script>{_SORT_JS}</script>
</body></html>
"""


def write_report(res: dict[str, Any], out: str | Path, dpi: int = 72) -> dict[str, Any]:
    """Write results.json, the plots (``dpi``), report.html and summary.txt into ``out`` (which
    must exist)."""
    out = Path(out)
    check_results(res)
    paths = {"results": write_results(res, out / "results.json")}
    plots = _plots(res, out, dpi)
    summary = summarize(res)
    page = out / "report.html"
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(_html(res, plots, summary))
    os.replace(tmp, page)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    return {**paths, "html": page, "plots": plots, "summary": summary}
