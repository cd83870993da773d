"""The report's "Family" section (`dery run --family`, issue 28): the family's paths against the run's own
separately trained networks at the same budgets (top-1, latency, bytes), and their plot beside the donors."""

from __future__ import annotations

from pathlib import Path

from dery_deploy.pipeline.family_record import FamilyRecord
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.report.plots import finish_accuracy_plot
from dery_deploy.report.text import fmt_pct, md_table


def _ms(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f} ± {se:.4f}" if se else f"{v:.4f}"


def _training(how: str) -> str:
    """How the paths were trained (`--family-training`), in a sentence."""
    if how == "joint":
        return (
            "The paths were trained together (`--family-training joint`): every block two paths share is one set "
            "of weights, and every step sums every path's loss on the same batch (same recipe and teacher); "
            "BatchNorm in the borrowed blocks kept the donors' statistics (its scale and shift trained)."
        )
    return (
        "The largest path is fine-tuned as a budget's pick is; each smaller one takes the largest path's trained "
        "weights in the blocks it shares with it, frozen, and trains its own blocks, adapters and head (same "
        "recipe and teacher)."
    )


def family_section(m: RunManifest, png: Path | None) -> list[str]:
    """The section's lines; none for a run without --family."""
    fam = m.family
    if fam is None:
        return []
    lines = ["## Family", ""]
    if fam.note:
        return [*lines, fam.note, ""]
    rows = []
    for p in fam.paths:
        diff = p.difference
        rows.append(
            [
                f"{p.budget_ms:g}",
                f"`{p.plan}`",
                fmt_pct(p.top1),
                _ms(p.before_ms, p.before_se_ms) + (" (fallback)" if p.fallback else ""),
                _ms(p.latency_ms, p.latency_se_ms),
                "yes" if p.within else ("**no**" if p.within is False else "undecided"),
                f"`{p.separate_plan}`" if p.separate_plan else "-",
                fmt_pct(p.separate_top1),
                _ms(p.separate_ms),
                f"{diff:+.2f}" if diff is not None else "-",
                p.trained,
            ]
        )
    q = f"p{fam.percentile}"
    header = ["budget (ms)", "family path", "top-1", f"{q} before training (ms)", f"{q} family pass (ms)", "within"]
    header += ["separate pick", "its top-1", "its latency (ms)", "top-1 difference", "trained"]
    mb = 1e6
    lines += [
        f"One path per budget chosen together by the family program ({fam.solver_status} in {fam.solve_seconds} s, "
        f"each path at most {100 * fam.delta:g}% of its budget's own optimum quality below it, planned with the "
        f"run's margin {100 * fam.margin:.1f}%), shipped in `{Path(fam.folder).name}/` on {fam.target} at batch 1. "
        + _training(fam.training)
        + " Latencies of the paths are from the family's own interleaved pass; the separate "
        "picks' from the run's final pass. Before any training each chosen path's untrained network was measured "
        f"in one interleaved pass ({fam.before_passes} pass(es){_load(fam.before_other_load_cores)}); a path over "
        "its budget there has its planned budget lowered by the excess and the program solved again (at most "
        "twice), else falls back to the separate pick's plan.",
        "",
        *[f"- {n}" for n in fam.before_notes],
        *([""] if fam.before_notes else []),
        md_table(header, rows),
        "",
        f"Weights: {fam.distinct_bytes / mb:.3f} MB stored once (the paths' graphs hold {fam.paths_bytes / mb:.3f} MB "
        f"between them) against {fam.separate_bytes / mb:.3f} MB in the run's separately shipped files at these "
        f"budgets: {fam.ratio}x.",
        "",
    ]
    if fam.over:
        lines += [f"Over budget in the family's pass: {', '.join(f'{p.name} ({p.verdict})' for p in fam.over)}.", ""]
    if png is not None:
        lines += [f"![Family vs separate networks]({png.name})", ""]
    return lines


def _load(cores: float | None) -> str:
    return f", other processes using up to {cores:.2f} cores" if cores else ""


def family_png(path: Path, m: RunManifest) -> Path | None:
    """Latency vs top-1: the family's paths, the run's separate picks and the donors; None without a family."""
    fam: FamilyRecord | None = m.family
    if fam is None or not fam.paths:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    for name, d in m.donors.items():
        if d.top1 is not None:
            ax.scatter(d.latency_ms, d.top1, marker="o", s=46, color="#4c72b0", zorder=3)
            ax.annotate(name, (d.latency_ms, d.top1), textcoords="offset points", xytext=(5, -10), fontsize=7.5)
    for p in fam.paths:
        ax.axvline(p.budget_ms, color="#999999", lw=0.8, ls="--", zorder=1)
        if p.separate_ms is not None and p.separate_top1 is not None:
            ax.scatter(p.separate_ms, p.separate_top1, marker="s", s=60, color="#dd8452", zorder=4)
        if p.latency_ms is not None and p.top1 is not None:
            ax.scatter(p.latency_ms, p.top1, marker="*", s=160, color="#55a868", zorder=5)
            ax.annotate(p.name, (p.latency_ms, p.top1), textcoords="offset points", xytext=(6, 4), fontsize=7.5)
    ax.scatter([], [], marker="o", color="#4c72b0", label="donor, fine-tuned")
    ax.scatter([], [], marker="s", color="#dd8452", label="separately trained pick")
    ax.scatter([], [], marker="*", color="#55a868", label="family path (shared blocks)")
    return finish_accuracy_plot(
        fig, ax, path, f"{fam.target}, batch 1, {m.device}", "The family's paths against separately trained networks"
    )
