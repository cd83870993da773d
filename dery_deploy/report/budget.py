"""One budget's section of the run report: the verdict, the pick and why, the targets tried, the
networks compared, the selection, the candidates and the exports."""

from __future__ import annotations

from dery_deploy.export.stage import BudgetVerdict
from dery_deploy.report.answers import donor_top1
from dery_deploy.report.text import describe, evidence, fmt_ms, fmt_pct, md_table


def budget(r: dict, run: dict) -> list[str]:
    """The section of the budget whose result is `r`."""
    lines = [f"### Budget {r['budget_ms']:g} ms", ""]
    if "infeasible" in r:
        return lines + [f"Infeasible: {r['infeasible']}", ""]
    sel = r.get("selection") or {}
    pick = r.get("pick_triple") or {}
    lines += [verdict_line(r, run), ""]
    lines += pick_line(pick, sel, run)
    lines += triples_table(r, sel, pick)
    lines += networks_table(r, run)
    lines += phase1_line(r)
    lines += selection_table(sel)
    lines += candidates_table(r)
    lines += exports(r)
    return lines


def verdict_line(r: dict, run: dict) -> str:
    """Whether reassembly won, tied or lost at this budget, in words, on the test split."""
    donors = [n for n in r["donors_within_budget"]]
    best = donors[0] if donors else None
    mix = r.get("mix")
    if best is None:
        if mix:
            return (
                f"No donor fits {r['budget_ms']:g} ms; the reassembled network reaches **{mix['top1']:.2f}%** "
                "(test): reassembly **won** by default."
            )
        return "No donor and no mixed plan fits."
    d = donor_top1(r, run, best)
    if not mix:
        return f"The best donor that fits, {best}, reaches {d:.2f}%; no mixed plan was a finalist."
    diff = mix["top1"] - d
    word = "won" if diff >= 1 else ("tied" if diff > -1 else "lost")
    return (
        f"Best mixed plan {mix['top1']:.2f}% vs best fitting donor {best} {d:.2f}% (test): reassembly "
        f"**{word}** ({diff:+.2f} points); shipped: the pick below ({r.get('pick_kind')}), {r['top1']:.2f}%."
    )


def pick_line(pick: dict, sel: dict, run: dict) -> list[str]:
    """What ships, on which target, and the rule that picked it."""
    return [
        f"Pick: **{pick.get('network', sel.get('pick'))}** on **{pick.get('target', run['backend'])}**, because "
        f"{pick.get('rule', sel.get('rule'))}.",
        "",
    ]


def triples_table(r: dict, sel: dict, pick: dict) -> list[str]:
    """Every finalist on every target it was a candidate for: latency and validation accuracy."""
    if not r.get("triples"):
        return []
    shipped = (pick.get("network"), pick.get("target"))
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
                    t["network"],
                    t["target"],
                    fmt_ms(t["measured_ms"]),
                    f"{t['val_accuracy']:.2f}",
                    f"{t['int8_change']:+.2f}" if t["target"].endswith("/int8") else "-",
                    "yes" if (t["network"], t["target"]) == shipped else "",
                ]
                for t in sorted(r["triples"], key=lambda t: (-t["val_accuracy"], t["measured_ms"]))
            ],
        ),
        "",
    ]


def networks_table(r: dict, run: dict) -> list[str]:
    """The best mixed plan beside every donor that fits: predicted and measured latency, size, accuracy."""
    rows = []
    if r.get("mix"):
        m = r["mix"]
        rows.append(
            [
                f"best mixed plan `{describe(m['plan'])}`",
                f"{m['plan']['predicted']['latency_ms']:.4f}",
                fmt_ms(m.get("measured_ms")),
                f"{m['params_m']:.3f}",
                fmt_pct(m.get("val_accuracy")),
                f"{m['top1']:.2f}",
            ]
        )
    for n in r["donors_within_budget"]:
        d = run["donors"][n]
        rows.append(
            [
                f"donor {n}",
                "-",
                f"{d['latency_ms']:.4f}",
                f"{d['params_m']:.3f}",
                fmt_pct(d.get("val_accuracy")),
                f"{d['top1']:.2f}",
            ]
        )
    header = ["network", "predicted ms", "measured ms", "params (M)", "validation (%)", "test top-1 (%)"]
    return [md_table(header, rows), ""]


def phase1_line(r: dict) -> list[str]:
    """The best mixed plan after training adapters and head only, against end to end."""
    mix = r.get("mix")
    if not mix or mix.get("phase1_top1") is None:
        return []
    sm = mix.get("seam_matching") or []
    healed = f" after seam matching (relative error {sm[-1]['seam_rel_mse']:.3f})" if sm else ""
    kept = f"; shipped as {mix['kept']}" if str(mix.get("kept", "")).startswith("phase 1") else ""
    return [
        f"Best mixed plan, adapters and head only (blocks frozen){healed}: test top-1 "
        f"{mix['phase1_top1']:.2f}%; end to end: {mix['top1']:.2f}%" + kept + ".",
        "",
    ]


def selection_table(sel: dict) -> list[str]:
    """The successive-halving rungs: every finalist's held-out accuracy on the folds it was screened on."""
    if not sel.get("trials"):
        return []
    return [
        f"Selection by successive halving, decided {evidence(sel)}; held-out accuracy per rung (rungs below "
        "the last screen on the folds named):",
        "",
        md_table(
            ["rung", "finalist", "held-out (%)", "folds", "seconds"],
            [
                [
                    t["rung"],
                    t["finalist"],
                    f"{t['val_accuracy']:.2f}",
                    ", ".join(str(f + 1) for f in t.get("folds", [0])),
                    t["seconds"],
                ]
                for t in sel["trials"]
            ],
        ),
        "",
    ]


def candidates_table(r: dict) -> list[str]:
    """The program's candidates, which became finalists, and those dropped as measured over the budget."""
    if not r.get("candidates"):
        return []
    finalists = {c["plan"] for c in r.get("finalists", [])}
    lines = [
        f"Candidates (the program's top N, donors that fit, the best one- and two-seam chains); planned "
        f"at the budget less the latency model's p90 under-prediction ({100 * r.get('margin', 0):.1f}%); "
        "finalists measured end to end on the device:",
        "",
        md_table(
            ["plan", "origin", "predicted ms", "measured ms", "quality", "proxy", "finalist"],
            [
                [
                    c["plan"],
                    c["origin"],
                    c["predicted_ms"],
                    fmt_ms((c.get("measured") or {}).get("median_ms")),
                    "-" if c["quality"] is None else f"{c['quality']:.1f}",
                    c["proxy"],
                    "yes" if c["plan"] in finalists else "",
                ]
                for c in r["candidates"]
            ],
        ),
        "",
    ]
    rejected = r.get("rejected_over_budget") or []
    if rejected:
        lines += [
            "Dropped after measurement (over the budget): "
            + ", ".join(f"`{c['plan']}` {c['measured']['median_ms']:.4f} ms" for c in rejected),
            "",
        ]
    return lines


def exports(r: dict) -> list[str]:
    """Each export: its artifact, parity with the trained network, latency and budget verdict; or its error."""
    lines = ["Exports:", ""]
    for key in ("export", "aoti"):
        e = r.get(key)
        if not e:
            continue
        if e.get("error") is not None:
            lines += [f"- {e['format']}: {e['error']}"]
        elif not e.get("parity"):
            lines += [f"- {e['format']}: `{e['artifact']}`, not run on this machine"]
        else:
            b = e.get("budget") or {}
            verdict = BudgetVerdict(**b).word() if b.get("checked") else "not checked"
            lines += [
                f"- {e['format']}: `{e['artifact']}`, parity max |diff| {e['parity']['max_abs_diff']:.2e} on "
                f"{e['parity']['images']} images, top-1 identical {e['parity']['top1_identical']}; latency "
                f"{e['timing']['latency_ms']:.4f} ms ({e['latency_backend']}); budget: {verdict}"
            ]
    history = r.get("measured_history_ms") or []
    if len(history) > 1:
        b = (r.get("export") or {}).get("budget") or {}
        lines += [
            f"- the shipped file measured {history[0]:.4f} ms in the final pass, beside every compared network, "
            "which is over its budget or far from the measurement that admitted it; re-measured alone with the "
            f"machine's reference: {', '.join(f'{ms:.4f}' for ms in history[1:])} ms. The verdict reads the median: "
            + (BudgetVerdict(**b).line() if b.get("checked") else "not checked")
        ]
    return lines + [""]
