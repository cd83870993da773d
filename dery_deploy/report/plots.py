"""Plots of the run report (matplotlib, Agg): the accuracy-vs-latency Pareto plot."""

from __future__ import annotations

from pathlib import Path

from dery_deploy.artifacts import atomic_write_with
from dery_deploy.pipeline.records import BudgetResult, DonorResult


def pareto_png(
    path: Path, donors: dict[str, DonorResult], results: list[BudgetResult], backend: str, device: str
) -> Path:
    """Donors (measured latency from the profile) and reassembled networks (measured end to end)
    on accuracy vs latency, with the Pareto front over all points and the budgets as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    pts: list[tuple[float, float]] = []
    for name, d in donors.items():
        if d.top1 is None:  # not evaluated on the test split: nothing to place
            continue
        ax.scatter(d.latency_ms, d.top1, marker="o", s=46, color="#4c72b0", zorder=3)
        ax.annotate(name, (d.latency_ms, d.top1), textcoords="offset points", xytext=(5, -10), fontsize=7.5)
        pts.append((d.latency_ms, d.top1))
    for p in results:
        ax.axvline(p.budget_ms, color="#999999", lw=0.8, ls="--", zorder=1)
        mix = p.mix
        if not mix:
            continue
        assert mix.plan.predicted is not None, "a healed mix is an assembled plan, with its prediction"
        x = mix.measured_ms or mix.plan.predicted.latency_ms
        ax.scatter(x, mix.top1, marker="*", s=160, color="#dd5533", zorder=4)
        ax.annotate(
            f"mixed, {p.budget_ms:g} ms budget",
            (x, mix.top1),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=7.5,
            color="#aa3311",
        )
        pts.append((x, mix.top1))
    front, best = [], -1.0
    for x, y in sorted(pts):
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        ax.step(
            [f[0] for f in front],
            [f[1] for f in front],
            where="post",
            color="#55aa55",
            lw=1.2,
            zorder=2,
            label="Pareto front",
        )
    ax.scatter([], [], marker="o", color="#4c72b0", label="donor, fine-tuned")
    ax.scatter([], [], marker="*", color="#dd5533", label="reassembled, fine-tuned")
    title = "Accuracy vs latency: donors and reassembled networks (same recipe)"
    return finish_accuracy_plot(fig, ax, path, f"{backend}, batch 1, {device}", title)


def finish_accuracy_plot(fig, ax, path: Path, where: str, title: str) -> Path:
    """The accuracy-vs-latency plots' common end: the budget line's legend entry, labels, title, grid, and
    the PNG written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.plot([], [], color="#999999", lw=0.8, ls="--", label="latency budget")
    ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel(f"latency per image (ms, {where})")
    ax.set_ylabel("top-1 accuracy on the test set (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
