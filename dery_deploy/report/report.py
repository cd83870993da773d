"""The run report: report.md and report.html (rendered from the same Markdown) in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dery_deploy.artifacts import atomic_write_text
from dery_deploy.partition.stage import Partition
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.profile.store import Profile
from dery_deploy.report import sections
from dery_deploy.report.answers import Answer, answers, donor_top1, measured_text
from dery_deploy.report.budget import verdict_line
from dery_deploy.report.family import family_png, family_section
from dery_deploy.report.plots import pareto_png
from dery_deploy.report.sections import ANSWER_HEADER, answer_rows
from dery_deploy.report.text import evidence, md_table
from dery_deploy.similarity.compute import Similarity, heatmap_png
from dery_deploy.zoo.spec import ZooSpec

if TYPE_CHECKING:  # the zoo's listing loads its donors: only its type is needed here
    from dery_deploy.zoo.summary import DonorRow

# names this module has always offered, now defined in the modules above
__all__ = [
    "ANSWER_HEADER",
    "Answer",
    "answer_rows",
    "answers",
    "donor_top1",
    "evidence",
    "md_table",
    "measured_text",
    "verdict_line",
    "write_report",
]


def write_report(
    out: Path,
    manifest: RunManifest,
    zoo: ZooSpec,
    sim: Similarity,
    part: Partition,
    prof: Profile,
    rows: list[DonorRow],
) -> Path:
    """Draw the figures, join the sections, and write report.md and report.html into `out`."""
    out = Path(out)
    m = manifest
    pairs = sections.heatmap_pairs(zoo.donor_names, rows)
    heatmaps = {(a, b): heatmap_png(sim, zoo, a, b, out / f"cka-{a}-{b}.png") for a, b in pairs}
    pareto = pareto_png(out / "pareto.png", m.donors, m.results, m.backend, m.device)
    lines = [
        *sections.title(zoo.name, m),
        *sections.answer(m, out, zoo.hash()),
        *sections.zoo(rows, m),
        *sections.similarity(len(zoo.donor_names), heatmaps),
        *sections.partition(part),
        *sections.profile(prof, m),
        *sections.plans(m),
        *sections.pareto(pareto, m),
        *family_section(m, family_png(out / "family.png", m)),
        *sections.stages(m),
    ]
    md = "\n".join(lines)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(md))
    return out / "report.md"


def _html(md: str) -> str:
    """The same Markdown as one self-contained HTML page."""
    import markdown

    body = markdown.markdown(md, extensions=["tables"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dery run report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f0f0f0}img{max-width:100%}code{background:#f5f5f5}</style></head><body>"
        + body
        + "</body></html>"
    )
