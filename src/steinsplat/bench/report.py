"""The benchmark's report: report.json (everything), report.md (tables, targets in plain words) and
PNG plots (matplotlib, Agg): variance against step, quality against step and against wall time."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ..atomic import atomic_write_bytes

PLOTS = ("variance_vs_step.png", "quality_vs_step.png", "quality_vs_time.png")


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(rep: dict) -> str:
    meta = rep["meta"]
    L = [f"# steinsplat bench ({'quick' if meta['config']['quick'] else 'full'} mode)", "",
         f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
         f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
         f"- prompts: {len(meta['prompts'])} ({', '.join(meta['prompts'][:8])}{' ...' if len(meta['prompts']) > 8 else ''}); "
         f"seeds {meta['config']['seeds']}; {meta['config']['steps']} steps", f"- wall time of the benchmark: {meta['seconds']:.0f} s"
         + (f" ({meta['reused_runs']} convergence runs reused from an earlier invocation)" if meta.get("reused_runs") else ""),
         ""]
    L += ["## Targets", ""] + [f"- **{'met' if t['met'] else 'NOT met'}** — {t['what']}: {t['measured']}" for t in rep["targets"]] + [""]
    L += ["## Gradient variance (parameter space, over paired draws)", "",
          "tr Cov of the gradient w.r.t. all Gaussian parameters; ratio to SDS on the same draws; "
          "z: paired test of equal means with SDS (about 0.8 when equal; '-' where the means need not agree).", "",
          "| point (step) | band | cameras | method | variance | vs SDS | mean z | s/draw |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rep["variance"]:
        L.append(f"| {r['point']} ({r['step']}) | {r['band']} | {r['cameras']} | {r['method']} | {r['variance']:.4g} | "
                 f"{_fmt(r['ratio_vs_sds'])} | {_fmt(r['mean_z_vs_sds'], 2)} | {_fmt(r['seconds_per_draw'])} |")
    L += ["", "## Convergence (final metrics, mean ± std over runs)", ""]
    for group, res in rep["convergence"]["summary"].items():
        L += [f"### {group}", "", "| method | runs | mask IoU | PSNR | colour err | depth err (m) | R-precision | s/step | "
              "reaches SDS's final IoU at step (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for m, e in res.items():
            reach = e.get("reach_sds_final_iou")
            rs = "-" if not reach or reach["step"] is None else f"{reach['step']} ({reach['seconds']:.0f} s)"
            L.append(f"| {m} | {e['runs']} | {_fmt(e['mask_iou'])} ± {_fmt(e['mask_iou_std'])} | {_fmt(e['psnr'], 2)} ± "
                     f"{_fmt(e['psnr_std'], 2)} | {_fmt(e['colour_error'])} ± {_fmt(e['colour_error_std'])} | "
                     f"{_fmt(e['depth_error'])} ± {_fmt(e['depth_error_std'])} | {_fmt(e['r_precision'], 2)} | "
                     f"{_fmt(e['seconds_per_step'])} | {rs} |")
        L.append("")
    L += ["## Cost (one process, side by side)", "", "| method | s/step | vs SDS | peak extra memory (MB) |", "|---|---:|---:|---:|"]
    L += [f"| {r['method']} | {r['seconds_per_step']:.4f} | {_fmt(r['ratio_vs_sds'], 2)} | {r['peak_memory_mb']:.0f} |" for r in rep["cost"]]
    if rep.get("ablations"):
        L += ["", "## Ablations (variance at the middle snapshot, all timesteps, same cameras)", "",
              "| variant | variance | vs SDS | mean z vs SDS | s/draw |", "|---|---:|---:|---:|---:|"]
        L += [f"| {r['method']} | {r['variance']:.4g} | {_fmt(r['ratio_vs_sds'])} | {_fmt(r['mean_z_vs_sds'], 2)} | "
              f"{_fmt(r['seconds_per_draw'])} |" for r in rep["ablations"]]
    if rep.get("decomposition", {}).get("rows"):
        from .decomposition import decomposition_markdown

        L += [""] + decomposition_markdown(rep["decomposition"])
    L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
    return "\n".join(L) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(rep: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .convergence import Run, CurvePoint, mean_curve

    written = []
    var = [r for r in rep["variance"] if r["band"] == "all"]
    cams = sorted({r["cameras"] for r in var})
    fig, axes = plt.subplots(1, max(1, len(cams)), figsize=(5 * max(1, len(cams)), 3.6), squeeze=False)
    for ax, cm in zip(axes[0], cams):
        for m in dict.fromkeys(r["method"] for r in var):
            pts = sorted((r["step"], r["variance"]) for r in var if r["method"] == m and r["cameras"] == cm)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_yscale("log")
        ax.set_xlabel("optimisation step of the snapshot")
        ax.set_ylabel("tr Cov(parameter gradient)")
        ax.set_title(f"variance, all timesteps, {cm} cameras")
        ax.legend(fontsize=8)
    atomic_write_bytes(folder / PLOTS[0], _png(fig))
    plt.close(fig)
    written.append(folder / PLOTS[0])

    runs = [Run(**{**r, "curve": [CurvePoint(**p) for p in r["curve"]]}) for r in rep["convergence"]["runs"]]
    objs = [r for r in runs if not r.room]
    methods = list(dict.fromkeys(r.method for r in objs))
    for name, xkey in ((PLOTS[1], "step"), (PLOTS[2], "seconds")):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for m in methods:
            c = mean_curve([r for r in objs if r.method == m], "mask_iou")
            ax.plot([p[0] if xkey == "step" else p[1] for p in c], [p[2] for p in c], marker=".", label=m)
        ax.set_xlabel("step" if xkey == "step" else "optimisation wall time (s)")
        ax.set_ylabel("mean mask IoU (objects)")
        ax.set_title(f"quality against {'steps' if xkey == 'step' else 'wall time'}")
        ax.legend(fontsize=8)
        atomic_write_bytes(folder / name, _png(fig))
        plt.close(fig)
        written.append(folder / name)
    return written


def write_report(rep: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "report.json", json.dumps(clean(rep), indent=2, allow_nan=False).encode())
    atomic_write_bytes(folder / "report.md", markdown(rep).encode())
    return [folder / "report.json", folder / "report.md", *plots(rep, folder)]


def clean(o):
    """JSON-safe copy: NaN / inf -> None (strict JSON has neither), paths -> str, tuples -> lists."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o
