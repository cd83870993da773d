"""One budget's section of the run report: the verdict, the pick and why, the targets tried, the
networks compared, the selection, the candidates and the exports."""

from __future__ import annotations

from dery_deploy.network.plan_records import REUSED, Evidence
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.records import BudgetResult, Pick, Triple
from dery_deploy.report.answers import donor_top1
from dery_deploy.report.text import evidence, fmt_ms, fmt_pct, md_table
from dery_deploy.runtime.target import is_int8
from dery_deploy.train.select.evidence import Selection


def budget(r: BudgetResult, m: RunManifest) -> list[str]:
    """The section of the budget whose result is `r`."""
    lines = [f"### Budget {r.budget_ms:g} ms", ""]
    if r.infeasible is not None:
        return lines + [f"Infeasible: {r.infeasible}", ""]
    sel, pick = r.selection, r.pick_triple
    if r.raised:
        lines += [f"**Raised:** {r.raised.why}.", ""]
    lines += [verdict_line(r, m), ""]
    lines += pick_line(pick, sel, m)
    lines += triples_table(r.triples or [], sel, pick)
    lines += networks_table(r, m)
    lines += phase1_line(r)
    lines += selection_table(sel)
    lines += candidates_table(r)
    lines += exports(r)
    return lines


def verdict_line(r: BudgetResult, m: RunManifest) -> str:
    """Whether reassembly won, tied or lost at this budget, in words, on the test split."""
    best = r.donors_within_budget[0] if r.donors_within_budget else None
    mix = r.mix
    if best is None:
        if mix:
            return (
                f"No donor fits {r.promised_ms:g} ms; the reassembled network reaches **{mix.top1:.2f}%** "
                "(test): reassembly **won** by default."
            )
        return "No donor and no mixed plan fits."
    d = donor_top1(r, m, best)
    assert d is not None, "a donor that fits was evaluated on the test split"
    if not mix and r.mix_not_healed:
        return (
            f"The best donor that fits, {best}, reaches {d:.2f}%; reassembly **lost** in selection, and its best "
            f"mixed plan was not healed ({r.mix_not_healed}; `--heal-every-mix` heals it)."
        )
    if not mix:
        return f"The best donor that fits, {best}, reaches {d:.2f}%; no mixed plan was a finalist."
    diff = mix.top1 - d
    word = "won" if diff >= 1 else ("tied" if diff > -1 else "lost")
    return (
        f"Best mixed plan {mix.top1:.2f}% vs best fitting donor {best} {d:.2f}% (test): reassembly "
        f"**{word}** ({diff:+.2f} points); shipped: the pick below ({r.pick_kind}), {r.top1:.2f}%."
    )


def pick_line(pick: Pick | None, sel: Selection | None, m: RunManifest) -> list[str]:
    """What ships, on which target, and the rule that picked it."""
    network: str | None
    rule: str | None
    if pick is not None:
        network, target, rule = pick.network, pick.target, pick.rule
    else:
        network, target, rule = (sel.pick, m.backend, sel.rule) if sel else (None, m.backend, None)
    return [f"Pick: **{network}** on **{target}**, because {rule}.", ""]


def triples_table(triples: list[Triple], sel: Selection | None, pick: Pick | None) -> list[str]:
    """Every finalist on every target it was a candidate for: latency and validation accuracy."""
    if not triples:
        return []
    shipped = (pick.network, pick.target) if pick else (None, None)
    return [
        "Runtimes and precisions tried (every finalist measured on every target it was a candidate for, in "
        f"one interleaved pass; validation accuracy: the selection's ({evidence(sel)}), plus the int8 "
        "change measured on the validation split by running the final network quantized on that runtime, "
        "a gain counted as none):",
        "",
        md_table(
            ["network", "runtime/precision", "measured ms", "validation (%)", "int8 change", "shipped"],
            [
                [
                    t.network,
                    t.target,
                    fmt_ms(t.measured_ms),
                    f"{t.val_accuracy:.2f}",
                    f"{t.int8_change:+.2f}" if is_int8(t.target) else "-",
                    "yes" if (t.network, t.target) == shipped else "",
                ]
                for t in sorted(triples, key=lambda t: (-t.val_accuracy, t.measured_ms))
            ],
        ),
        "",
    ]


def networks_table(r: BudgetResult, m: RunManifest) -> list[str]:
    """The best mixed plan beside every donor that fits: predicted and measured latency, size, accuracy."""
    rows = []
    if r.mix:
        mix = r.mix
        at = f" (healed at {mix.carried_from:g} ms)" if mix.carried_from is not None else ""
        rows.append(
            [
                f"best mixed plan `{mix.plan.describe()}`{at}",
                fmt_ms(mix.plan.predicted.latency_ms if mix.plan.predicted else None),
                fmt_ms(mix.measured_ms),
                f"{mix.params_m:.3f}",
                fmt_pct(mix.val_accuracy),
                f"{mix.top1:.2f}",
            ]
        )
    for n in r.donors_within_budget or []:
        d = m.donors[n]
        rows.append(
            [
                f"donor {n}",
                "-",
                f"{d.latency_ms:.4f}",
                f"{d.params_m:.3f}",
                fmt_pct(d.val_accuracy),
                f"{d.top1:.2f}",
            ]
        )
    header = ["network", "predicted ms", "measured ms", "params (M)", "validation (%)", "test top-1 (%)"]
    return [md_table(header, rows), ""]


def phase1_line(r: BudgetResult) -> list[str]:
    """The best mixed plan after training adapters and head only, against end to end."""
    mix = r.mix
    if not mix or mix.phase1_top1 is None:
        return []
    sm = mix.seam_matching
    healed = f" after seam matching (relative error {sm[-1].seam_rel_mse:.3f})" if sm else ""
    kept = f"; shipped as {mix.kept}" if (mix.kept or "").startswith("phase 1") else ""
    return [
        f"Best mixed plan, adapters and head only (blocks frozen){healed}: test top-1 "
        f"{mix.phase1_top1:.2f}%; end to end: {mix.top1:.2f}%" + kept + ".",
        "",
    ]


def selection_table(sel: Selection | None) -> list[str]:
    """The successive-halving rungs: every finalist's held-out accuracy on the folds it was screened on."""
    if sel is None or not sel.trials:
        return []
    return [
        f"Selection by successive halving, decided {evidence(sel)}; held-out accuracy per rung (rungs below "
        "the last screen on the folds named):",
        "",
        md_table(
            ["rung", "finalist", "held-out (%)", "folds", "seconds"],
            [
                [t.rung, t.finalist, f"{t.val_accuracy:.2f}", ", ".join(str(f + 1) for f in t.folds), seconds(t)]
                for t in sel.trials
            ],
        ),
        "",
    ]


def seconds(t: Evidence) -> str:
    """A rung's training seconds, or that the run read its trials back (trained under a smaller budget)."""
    if REUSED not in t.workers:
        return str(t.seconds)
    return "read back" if set(t.workers) == {REUSED} else f"{t.seconds} (some folds read back)"


def candidates_table(r: BudgetResult) -> list[str]:
    """The program's candidates, which became finalists, and those dropped as measured over the budget."""
    if not r.candidates:
        return []
    finalists = {(c.plan, c.target) for c in r.finalists or []}
    lines = [
        f"Candidates (the program's top N, donors that fit, the best one- and two-seam chains); planned "
        f"at the budget less the latency model's p90 under-prediction ({100 * (r.margin or 0):.1f}%); "
        "finalists measured end to end on the device (the figure the budget is judged by: the per-call "
        "percentile over all calls):",
        "",
        md_table(
            ["plan", "target", "origin", "predicted ms", "measured ms", "quality", "proxy", "finalist"],
            [
                [
                    c.plan,
                    c.target,
                    c.origin,
                    c.predicted_ms,
                    fmt_ms(c.measured.latency_ms if c.measured else None),
                    "-" if c.quality is None else f"{c.quality:.1f}",
                    c.proxy,
                    "yes" if (c.plan, c.target) in finalists else "",
                ]
                for c in r.candidates
            ],
        ),
        "",
    ]
    rejected = r.rejected_over_budget or []
    if rejected:
        lines += [
            "Dropped after measurement (over the budget): "
            + ", ".join(f"`{c.plan}` on {c.target} {c.measured.latency_ms:.4f} ms" for c in rejected if c.measured),
            "",
        ]
    return lines


def exports(r: BudgetResult) -> list[str]:
    """Each export: its artifact, parity with the trained network, latency and budget verdict; or its error."""
    lines = ["Exports:", ""]
    for e in (r.export, r.aoti):
        if e is None:
            continue
        if e.error is not None:
            lines += [f"- {e.format}: {e.error}"]
        elif e.parity is None or e.timing is None:
            lines += [f"- {e.format}: `{e.artifact}`, not run on this machine"]
        else:
            verdict = e.budget.word() if e.budget and e.budget.checked else "not checked"
            lines += [
                f"- {e.format}: `{e.artifact}`, parity max |diff| {e.parity.max_abs_diff:.2e} on "
                f"{e.parity.images} images, top-1 identical {e.parity.top1_identical}; latency "
                f"{e.timing.latency_ms:.4f} ms ({e.latency_backend}); budget: {verdict}"
            ]
    history = r.measured_history_ms or []
    b = r.export.budget if r.export else None
    verdict = b.line() if b and b.checked else "not checked"
    if r.measured_looks:
        looks = ", ".join(f"{ms:.4f}" for ms in r.verdict_figures)
        lines += [
            f"- the shipped package alone, as `dery bench` measures it: {looks} ms"
            + (" (the verdict reads the slowest look)" if r.measured_looks > 1 else "")
            + f"; {history[0]:.4f} ms in the final pass, beside every compared network. Verdict: {verdict}"
        ]
    elif len(history) > 1:
        lines += [
            f"- the shipped file measured {history[0]:.4f} ms in the final pass, beside every compared network, "
            "which is over its budget or far from the measurement that admitted it; re-measured alone with the "
            f"machine's reference: {', '.join(f'{ms:.4f}' for ms in history[1:])} ms. The verdict reads the "
            "slowest, a figure the file met in every pass: " + verdict
        ]
    return lines + [""]
