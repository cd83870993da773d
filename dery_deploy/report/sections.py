"""The run report's sections: pure functions, each returning one section's Markdown lines from the
run's typed results (`RunManifest`, and the zoo, partition and profile it was made with). The figures
are drawn before, by `write_report`; a section only names their files."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from dery_deploy.assemble.candidates import donor_near
from dery_deploy.partition.stage import Partition
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.records import RunEstimate, TaskRecord, TimeLimitRecord
from dery_deploy.pipeline.time_limit import over_limit
from dery_deploy.profile.store import LatencyCheck, Profile
from dery_deploy.report.answers import answers
from dery_deploy.report.budget import budget
from dery_deploy.report.text import md_table

if TYPE_CHECKING:  # the zoo's listing loads its donors: only its type is needed here
    from dery_deploy.zoo.summary import DonorRow

ANSWER_HEADER = [
    "budget (ms)",
    "ships",
    "runtime",
    "artifact",
    "measured (ms)",
    "test top-1 (%)",
    "best fitting donor (%)",
    "difference (points)",
]


def title(zoo_name: str, m: RunManifest) -> list[str]:
    return [f"# dery run: zoo `{zoo_name}` on `{m.device}`", ""]


def answer(m: RunManifest, root: Path, zoo_hash: str) -> list[str]:
    """The answer table, how its numbers were measured, and what the run searched with which options."""
    noise = m.final_pass.noise_index if m.final_pass else 0
    batch = m.options.batch or 1
    searched = m.targets or [f"{m.backend}/{m.precision}"]
    shown = {k: v for k, v in asdict(m.options).items() if k != "out" and v not in (None, [], "")}
    # options newer than most runs: said only where given
    for newer in ("family", "heal_every_mix", "train_every_donor"):
        if not getattr(m.options, newer):
            del shown[newer]
    if not m.options.family:
        shown.pop("family_training", None)
    options = ", ".join(f"`{k}={v}`" for k, v in shown.items())
    task = m.task or TaskRecord("", "", [], "")
    return (
        [
            "## The answer",
            "",
            md_table(ANSWER_HEADER, answer_rows(m, root)),
            "",
            "Latency: every donor and every shipped artifact measured together in one interleaved pass at the end "
            f"of the run (noise index {100 * noise:.1f}%: how much slower a typical window ran than a "
            "quiet one), which decides which donors fit; on the CPU each shipped package is then measured alone as "
            "`dery bench` measures it, and its 'measured' figure and budget verdict read that look (among the other "
            "files a package reads a few percent slower). ± is the measurement's standard error, the only "
            "allowance the budget check grants. "
            + (f"In that pass {spell}. " if m.final_pass and (spell := m.final_pass.spell_line()) else "")
            + "Test top-1 on the held-out test split, which decided nothing. Donors are trained with the same recipe.",
            "",
            f"Runtimes and precisions searched: {', '.join(searched)}; batch {batch}. Zoo hash `{zoo_hash}`. "
            f"Total time {m.seconds:.0f} s. "
            f"Task: {task.summary} (`{task.spec}`). "
            "Options: " + options + ".",
            "",
        ]
        + ([time_limit_line(m.time_limit, not m.options.budgets), ""] if m.time_limit and m.time_limit.minutes else [])
        + targets_lines(m)
    )


def targets_lines(m: RunManifest) -> list[str]:
    """Which targets selection searched, where the run left some out: thread counts screened on their whole
    donors (`pipeline/thread_screen.py`), whose speed moved between stretches of seconds (`thread_spells.py`;
    a count that held is said too) or whose measurements do not repeat (`pipeline/repeatability.py`),
    targets dominated at every budget (`pipeline/targets.py`)."""
    tp = m.target_pruning
    noisy = [f"- {s.why}" for s in m.screened] + [f"- {u.why}" for u in m.unrepeatable]
    noisy += [f"- {c.held()}" for c in m.thread_spells if c.repeats]
    if tp is None or not tp.dropped:
        return [*noisy, ""] if noisy else []
    raised = (
        f" Budgets raised during the run ({', '.join(f'{b:g} ms' for b in tp.restored_at)}) searched every target."
        if tp.restored_at
        else ""
    )
    return [
        f"Targets searched in selection: {', '.join(tp.kept)} (decided from the profiles in {tp.seconds:.1f} s; "
        f"`--keep-all-targets` searches every one).{raised}",
        "",
        *noisy,
        *(f"- {line}" for line in tp.lines()),
        "",
    ]


def time_limit_line(tl: TimeLimitRecord, budgets_chosen: bool = False) -> str:
    """What a run made under --time-limit cut to fit it, in words (the report and the terminal)."""
    cut = "cut " + "; ".join(tl.cuts) if tl.cuts else "nothing was cut"
    over = over_limit(tl.minutes, tl.estimated_s, budgets_chosen)
    return (
        f"Made under a time limit of {tl.minutes:g} min: {cut}; estimated {tl.estimated_s or 0:.0f} s "
        "in all after the profiles" + (f"; {over}." if over else ".")
    )


def answer_rows(m: RunManifest, root: Path | None = None) -> list[list[str]]:
    """The answer table's rows, one per budget."""
    rows = []
    for a in answers(m, root):
        if not a.feasible:
            rows.append([a.budget_text(), f"nothing: {a.infeasible}", "", "", "", "", "", ""])
            continue
        donor = "none fits"
        if a.donor:
            donor = f"{a.donor} {a.donor_top1:.2f}" + (f" ({a.donor_target})" if a.donor_target else "")
        rows.append(
            [
                a.budget_text(),
                a.ships,
                a.runtime,
                f"`{a.artifact}`" if a.artifact else "-",
                a.measured_text(),
                f"{a.top1:.2f}",
                donor,
                f"{a.difference:+.2f}" if a.donor else "-",
            ]
        )
    return rows


def zoo(rows: list[DonorRow], m: RunManifest) -> list[str]:
    """The donors: architecture, size, units, where the weights came from, and their latency."""
    latency_col = f"{m.backend} b{m.options.batch or 1} (ms)"
    lat = m.donor_latency_ms
    return [
        "## Zoo",
        "",
        md_table(
            ["donor", "arch", "family", "params (M)", "units", "source", "source acc (%)", latency_col],
            [
                [
                    r.donor,
                    r.arch,
                    r.family,
                    f"{r.params_m:.2f}",
                    r.units,
                    r.source,
                    "-" if r.source_accuracy is None else f"{r.source_accuracy:.2f}",
                    f"{lat[r.donor]:.3f}" if r.donor in lat else "-",
                ]
                for r in rows
            ],
        ),
        "",
    ]


def heatmap_pairs(donor_names: list[str], rows: list[DonorRow], n: int = 2) -> list[tuple[str, str]]:
    """Donor pairs of different families, most different first (a CNN vs the ViT is the telling one)."""
    fam = {r.donor: r.family for r in rows}
    pairs = [(a, b) for a, b in itertools.combinations(donor_names, 2) if fam[a] != fam[b]]
    pairs.sort(key=lambda p: (fam[p[0]] != "vit" and fam[p[1]] != "vit", p))
    return pairs[:n]


def similarity(n_donors: int, heatmaps: dict[tuple[str, str], Path]) -> list[str]:
    """The CKA heat-maps drawn (pair -> PNG), with a note on the pairs left out."""
    lines = ["## Similarity (linear CKA, unbiased mini-batch estimator)", ""]
    n_pairs = n_donors * (n_donors - 1) // 2
    if n_pairs > len(heatmaps):
        lines += [
            f"{len(heatmaps)} of the {n_pairs} donor pairs, the most different families first; "
            "`dery similarity --show A B --png FILE` draws any other.",
            "",
        ]
    for (a, b), png in heatmaps.items():
        lines += [f"![CKA {a} vs {b}]({png.name})", ""]
    return lines


def partition(part: Partition) -> list[str]:
    """The equivalence sets: each set's centre and every donor's block in it."""
    header = ["set", "centre"] + [b.donor for b in part.sets[0].blocks]
    return [
        f"## Partition (K = {part.K}, objective {part.objective:.3f}, {part.restarts} restarts, {part.seconds:.2f} s)",
        "",
        md_table(
            header,
            [
                [s.index, s.centre]
                + [
                    f"[{b.start},{b.end}) {b.out_spec.layout} {b.out_spec.channels}x{b.out_spec.height}"
                    for b in s.blocks
                ]
                for s in part.sets
            ],
        ),
        "",
    ]


def profile(prof: Profile, m: RunManifest) -> list[str]:
    """The profile's item latencies by kind, and how well the latency model predicted measured assemblies."""
    v = m.verify
    assert v is not None, "a run's report follows its latency-model check"
    kinds: dict[str, list[float]] = {}
    for r in prof.records.values():
        kinds.setdefault(r.kind, []).append(r.median_ms)
    return [
        "## Profile and latency model",
        "",
        md_table(
            ["kind", "items", "median ms (min .. max)"],
            [
                [k, len(xs), f"{sorted(xs)[len(xs) // 2]:.4f} ({min(xs):.4f} .. {max(xs):.4f})"]
                for k, xs in sorted(kinds.items())
            ],
        ),
        "",
        f"Latency model (sum of items minus per-call overhead, {v.speed} item latencies x {v.scale:.3f}) "
        f"against {v.n} random mixed assemblies measured end to end (leave-one-out): median |error| "
        f"**{100 * v.median_abs_rel_error:.2f}%**, max **{100 * v.max_abs_rel_error:.2f}%**; the raw sum of "
        f"items: median {100 * v.raw_median_abs_rel_error:.2f}%, max {100 * v.raw_max_abs_rel_error:.2f}%; "
        f"at the reference machine speed: median {100 * v.calibrated_median_abs_rel_error:.2f}%, max "
        f"{100 * v.calibrated_max_abs_rel_error:.2f}%." + blocks_line(v),
        "",
    ]


def blocks_line(v: LatencyCheck) -> str:
    """Blocks timed alone against blocks in context, where the latency check judged both."""
    alone, context = v.isolated_errors, v.context_errors
    if not (alone and context):
        return ""
    chosen = "in context" if v.context else "alone"
    return (
        f" Blocks timed alone predict them to a median {100 * alone[0]:.2f}% (max {100 * alone[1]:.2f}%); blocks in "
        f"context, each the difference of its donor's prefixes ending after and before it, to {100 * context[0]:.2f}% "
        f"(max {100 * context[1]:.2f}%): the model plans with blocks {chosen}."
    )


def plans(m: RunManifest) -> list[str]:
    """What every compared network was trained with, then one section per budget."""
    lines = ["## Plans per budget", ""]
    teacher = m.teacher
    if teacher:
        lines += [
            f"Every network below is trained with the same recipe, distillation from the teacher included: "
            f"{teacher.donor} (validation {teacher.val_accuracy}%), on {teacher.images} unlabelled images.",
            "",
        ]
    top = max(m.budgets, default=0.0)  # the donors a budget could have trained (`budgets.final_donors`)
    left = {n: why for n, why in m.dominated_donors.items() if donor_near(m.donor_latency_ms.get(n, top + 1), top)}
    if left:
        lines += [
            "Not trained with the final recipe, nor candidates (a faster donor validated far better after the short "
            "recipe, so they cannot be the best donor that fits): "
            + "; ".join(f"{n}: {why}" for n, why in sorted(left.items()))
            + ".",
            "",
        ]
    if m.recipe and m.recipe.cut_to_fit:
        lines += [f"The recipe is {m.recipe.cut_to_fit}.", ""]
    for r in m.results:
        lines += budget(r, m)
    return lines


def pareto(png: Path, m: RunManifest) -> list[str]:
    """The accuracy-vs-latency plot (already drawn to `png`) and what its points are."""
    return [
        "## Accuracy vs latency",
        "",
        f"![Pareto plot]({png.name})",
        "",
        "Every point is from the run's final pass: the fine-tuned donors (each with a "
        f"{len(m.task.classes) if m.task else 0}-class head) and the reassembled networks as exported, measured "
        "together, interleaved, with the plan's backend. All networks use the same data and recipe.",
        "",
    ]


def stages(m: RunManifest) -> list[str]:
    """Every stage of the run: computed or reused, and how long it took."""
    return [
        "## Stages",
        "",
        md_table(["stage", "status", "seconds", "note"], [[s.stage, s.status, s.seconds, s.note] for s in m.stages]),
        "",
    ] + estimate_lines(m.estimate)


def estimate_lines(est: RunEstimate | None) -> list[str]:
    """The time estimate made after the profiles against what the stages it expected took, per group."""
    if est is None or not est.actual:
        return []
    total = sum(p.seconds for p in est.parts)
    rows = [
        [g, f"{v.estimated_s:.0f}", f"{v.actual_s:.0f}", f"{100 * (v.actual_s / v.estimated_s - 1):+.0f}%"]
        for g, v in sorted(est.actual.items())
        if v.estimated_s > 0
    ]
    # what the estimate held out in advance, what the short recipe left out that it counted, what it put back
    held = [f"; not counting {expected}"] if (expected := est.expected_line()) else []
    if est.left_out_s:
        held.append(f"; {est.left_out_s:.0f} s of it were the final training of donors the short recipe left out")
    if est.put_back_s:
        held.append(f"; {est.put_back_s:.0f} s put back for what the run did after all")
    return [
        f"Time estimate, made after {est.after_s:.0f} s (the profiles): {total:.0f} s for the rest of the run, "
        f"from {len(est.step_s)} donors' training steps timed here and {est.item_s:.2f} s per "
        "measured item; against what the stages it expected took (computed ones only; training is an upper "
        "bound where phase 1 stops at its plateau)" + "".join(held) + ":",
        "",
        md_table(["group", "estimated s", "actual s", "actual vs estimate"], rows),
        "",
    ]
