"""The run report: report.md and report.html (rendered from the same Markdown) in the run folder."""

from __future__ import annotations

import itertools
from pathlib import Path

from dery_deploy.artifacts import atomic_write_text
from dery_deploy.export.stage import BudgetVerdict
from dery_deploy.report.plots import pareto_png
from dery_deploy.similarity.compute import heatmap_png


def evidence(sel: dict) -> str:
    """What a selection decided on, in words."""
    k, n = sel.get("folds") or 1, sel.get("images")
    images = f", {n} images" if n else ""
    return f"out of fold by {k}-fold cross-validation{images}" if k > 1 else f"on the validation split{images}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _heatmap_pairs(zoo, rows: list[dict], n: int = 2) -> list[tuple[str, str]]:
    """Donor pairs of different families, most different first (a CNN vs the ViT is the telling one)."""
    fam = {r["donor"]: r["family"] for r in rows}
    pairs = [(a, b) for a, b in itertools.combinations(zoo.donor_names, 2) if fam[a] != fam[b]]
    pairs.sort(key=lambda p: (fam[p[0]] != "vit" and fam[p[1]] != "vit", p))
    return pairs[:n]


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


def answers(run: dict, root: Path | None = None) -> list[dict]:
    """One answer per budget: what ships, on which runtime, where, its latency against the budget as
    the run's final pass measured it, its test accuracy, and the best donor that fits beside it."""
    q = (run.get("final_pass") or {}).get("percentile", 50)
    out = []
    for r in run["results"]:
        a: dict = {"budget_ms": r["budget_ms"], "percentile": q}
        if "plan" not in r:
            out.append({**a, "infeasible": str(r.get("infeasible", ""))})
            continue
        plan = r["plan"]
        n = plan.get("threads")
        threads = f", {n} thread" + ("" if n == 1 else "s") if n else ""
        onnx = r.get("onnx") or {}
        art = Path(r["export_dir"]) / onnx["artifact"] if r.get("export_dir") and onnx.get("artifact") else None
        if art is not None and root is not None:
            try:
                art = art.resolve().relative_to(Path(root).resolve())
            except ValueError:
                pass
        budget = onnx.get("budget") or {}
        best = (r.get("donors_within_budget") or [None])[0]
        out.append(
            {
                **a,
                "ships": f"{describe(plan)} ({r.get('pick_kind')})",
                "runtime": f"{plan.get('backend')} {plan.get('precision')}, batch {plan.get('batch', 1)}{threads}",
                "artifact": str(art) if art else None,
                "measured_ms": r.get("measured_ms"),
                "uncertainty": r.get("measured_uncertainty") or 0.0,
                "within_budget": budget.get("within_budget") if budget.get("checked") else None,
                "undecided": bool(budget.get("checked")) and budget.get("within_budget") is None,
                "top1": r["top1"],
                "donor": best,
                "donor_top1": _donor_top1(r, run, best),
                "donor_target": ((r.get("donor_fit") or {}).get(best) or {}).get("target"),
            }
        )
    return out


def _donor_top1(r: dict, run: dict, donor: str | None) -> float | None:
    """A fitting donor's test top-1 on the target it fits (its int8 accuracy where only int8 fits)."""
    if donor is None:
        return None
    fit = (r.get("donor_fit") or {}).get(donor)
    return fit["top1"] if fit else run["donors"][donor]["top1"]


def measured_text(a: dict) -> str:
    if a.get("measured_ms") is None:
        return "-"
    at = "" if a["percentile"] == 50 else f" (p{a['percentile']})"
    verdict = {True: ", within budget", False: ", OVER BUDGET", None: ""}[a["within_budget"]]
    if a.get("undecided"):
        verdict = ", UNDECIDED (too noisy to judge)"
    return f"{a['measured_ms']:.4f} ms{at} ±{100 * a['uncertainty']:.1f}%{verdict}"


def answer_rows(run: dict, root: Path | None = None) -> list[list[str]]:
    rows = []
    for a in answers(run, root):
        if "infeasible" in a:
            rows.append([f"{a['budget_ms']:g}", "nothing: " + a["infeasible"], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                f"{a['budget_ms']:g}",
                a["ships"],
                a["runtime"],
                f"`{a['artifact']}`" if a["artifact"] else "-",
                measured_text(a),
                f"{a['top1']:.2f}",
                (f"{a['donor']} {a['donor_top1']:.2f}" + (f" ({a['donor_target']})" if a.get("donor_target") else ""))
                if a["donor"]
                else "none fits",
                f"{a['top1'] - a['donor_top1']:+.2f}" if a["donor"] else "-",
            ]
        )
    return rows


def write_report(out: Path, manifest, zoo, sim, part, prof, rows: list[dict]) -> Path:
    out = Path(out)
    run = manifest.to_dict()
    batch = run["options"].get("batch") or 1
    searched = run.get("targets") or [f"{run['backend']}/{run['precision']}"]
    latency_col = f"{run['backend']} b{batch} (ms)"
    lines = [f"# dery run: zoo `{zoo.name}` on `{run['device']}`", ""]
    fp = run.get("final_pass") or {}
    lines += [
        "## The answer",
        "",
        md_table(ANSWER_HEADER, answer_rows(run, out)),
        "",
        "Latency: the shipped artifact and every donor measured together in one interleaved pass at the end of "
        f"the run (noise index {100 * fp.get('noise_index', 0):.1f}%: how much slower a typical window ran than a "
        "quiet one); ± is the measurement's standard error, the only allowance the budget check grants. Test "
        "top-1 on the held-out test split, which decided nothing. Donors are trained with the same recipe.",
        "",
    ]
    lines += [
        f"Runtimes and precisions searched: {', '.join(searched)}; batch {batch}. Zoo hash `{zoo.hash()}`. "
        f"Total time {run.get('seconds', 0):.0f} s. "
        f"Task: {run['task'].get('summary', '')} (`{run['task'].get('spec')}`). "
        "Options: "
        + ", ".join(f"`{k}={v}`" for k, v in run["options"].items() if k != "out" and v not in (None, [], ""))
        + ".",
        "",
    ]
    lat = run.get("donor_latency_ms", {})
    lines += [
        "## Zoo",
        "",
        md_table(
            ["donor", "arch", "family", "params (M)", "units", "source", "source acc (%)", latency_col],
            [
                [
                    r["donor"],
                    r["arch"],
                    r["family"],
                    f"{r['params_m']:.2f}",
                    r["units"],
                    r["source"],
                    "-" if r["source_accuracy"] is None else f"{r['source_accuracy']:.2f}",
                    f"{lat[r['donor']]:.3f}" if r["donor"] in lat else "-",
                ]
                for r in rows
            ],
        ),
        "",
    ]
    lines += ["## Similarity (linear CKA, unbiased mini-batch estimator)", ""]
    shown = _heatmap_pairs(zoo, rows)
    n_pairs = len(zoo.donor_names) * (len(zoo.donor_names) - 1) // 2
    if n_pairs > len(shown):
        lines += [
            f"{len(shown)} of the {n_pairs} donor pairs, the most different families first; "
            "`dery similarity --show A B --png FILE` draws any other.",
            "",
        ]
    for a, b in shown:
        png = heatmap_png(sim, zoo, a, b, out / f"cka-{a}-{b}.png")
        lines += [f"![CKA {a} vs {b}]({png.name})", ""]
    lines += [
        f"## Partition (K = {part.K}, objective {part.objective:.3f}, {part.restarts} restarts, {part.seconds:.2f} s)",
        "",
    ]
    header = ["set", "centre"] + [b.donor for b in part.sets[0].blocks]
    lines += [
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
    v = run["verify"]
    kinds = {}
    for r in prof.records.values():
        kinds.setdefault(r.kind, []).append(r.median_ms)
    lines += [
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
        f"Latency model (sum of items minus per-call overhead, {v['speed']} item latencies x {v['scale']:.3f}) "
        f"against {v['n']} random mixed assemblies measured end to end (leave-one-out): median |error| "
        f"**{100 * v['median_abs_rel_error']:.2f}%**, max **{100 * v['max_abs_rel_error']:.2f}%**; the raw sum of "
        f"items: median {100 * v['raw_median_abs_rel_error']:.2f}%, max {100 * v['raw_max_abs_rel_error']:.2f}%; "
        f"at the reference machine speed: median {100 * v['calibrated_median_abs_rel_error']:.2f}%, max "
        f"{100 * v['calibrated_max_abs_rel_error']:.2f}%.",
        "",
    ]
    lines += ["## Plans per budget", ""]
    plans = run["results"]
    teacher = run.get("teacher") or {}
    if teacher:
        lines += [
            f"Every network below is trained with the same recipe, distillation from the teacher included: "
            f"{teacher.get('donor')} (validation {teacher.get('val_accuracy')}%), on "
            f"{teacher.get('images')} unlabelled images.",
            "",
        ]
    if (run.get("recipe") or {}).get("cut_to_fit"):
        lines += [f"The recipe is {run['recipe']['cut_to_fit']}.", ""]
    for r in plans:
        lines += [f"### Budget {r['budget_ms']:g} ms", ""]
        if "infeasible" in r:
            lines += [f"Infeasible: {r['infeasible']}", ""]
            continue
        lines += [verdict_line(r, run), ""]
        sel = r.get("selection") or {}
        pick = r.get("pick_triple") or {}
        lines += [
            f"Pick: **{pick.get('network', sel.get('pick'))}** on **{pick.get('target', run['backend'])}**, because "
            f"{pick.get('rule', sel.get('rule'))}.",
            "",
        ]
        if r.get("triples"):
            lines += [
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
                            _ms(t["measured_ms"]),
                            f"{t['val_accuracy']:.2f}",
                            f"{t['int8_change']:+.2f}" if t["target"].endswith("/int8") else "-",
                            "yes" if (t["network"], t["target"]) == (pick.get("network"), pick.get("target")) else "",
                        ]
                        for t in sorted(r["triples"], key=lambda t: (-t["val_accuracy"], t["measured_ms"]))
                    ],
                ),
                "",
            ]
        rows_b = []
        if r.get("mix"):
            m = r["mix"]
            rows_b.append(
                [
                    f"best mixed plan `{describe(m['plan'])}`",
                    f"{m['plan']['predicted']['latency_ms']:.4f}",
                    _ms(m.get("measured_ms")),
                    f"{m['params_m']:.3f}",
                    _pct(m.get("val_accuracy")),
                    f"{m['top1']:.2f}",
                ]
            )
        for n in r["donors_within_budget"]:
            d = run["donors"][n]
            rows_b.append(
                [
                    f"donor {n}",
                    "-",
                    f"{d['latency_ms']:.4f}",
                    f"{d['params_m']:.3f}",
                    _pct(d.get("val_accuracy")),
                    f"{d['top1']:.2f}",
                ]
            )
        lines += [
            md_table(
                ["network", "predicted ms", "measured ms", "params (M)", "validation (%)", "test top-1 (%)"], rows_b
            ),
            "",
        ]
        if r.get("mix") and r["mix"].get("phase1_top1") is not None:
            sm = r["mix"].get("seam_matching") or []
            healed = f" after seam matching (relative error {sm[-1]['seam_rel_mse']:.3f})" if sm else ""
            lines += [
                f"Best mixed plan, adapters and head only (blocks frozen){healed}: test top-1 "
                f"{r['mix']['phase1_top1']:.2f}%; end to end: {r['mix']['top1']:.2f}%"
                + (f"; shipped as {r['mix']['kept']}" if str(r["mix"].get("kept", "")).startswith("phase 1") else "")
                + ".",
                "",
            ]
        if sel.get("trials"):
            lines += [
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
        if r.get("candidates"):
            finalists = {c["plan"] for c in r.get("finalists", [])}
            lines += [
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
                            _ms((c.get("measured") or {}).get("median_ms")),
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
        lines += ["Exports:", ""]
        for fmt in ("onnx", "aoti"):
            e = r.get(fmt)
            if not e:
                continue
            if "parity" in e:
                b = e.get("budget") or {}
                verdict = BudgetVerdict(**b).word() if b.get("checked") else "not checked"
                lines += [
                    f"- {fmt}: `{e['artifact']}`, parity max |diff| {e['parity']['max_abs_diff']:.2e} on "
                    f"{e['parity']['images']} images, top-1 identical {e['parity']['top1_identical']}; latency "
                    f"{e['latency_ms']:.4f} ms ({e['latency_backend']}); budget: {verdict}"
                ]
            else:
                lines += [f"- {fmt}: {e.get('error')}"]
        lines += [""]
    png = pareto_png(out / "pareto.png", run["donors"], [r for r in plans], run["backend"], run["device"])
    lines += ["## Accuracy vs latency", "", f"![Pareto plot]({png.name})", ""]
    lines += [
        "Every point is from the run's final pass: the fine-tuned donors (each with a "
        f"{len(run['task'].get('classes', []))}-class head) and the reassembled networks as exported, measured "
        "together, interleaved, with the plan's backend. All networks use the same data and recipe.",
        "",
    ]
    lines += [
        "## Stages",
        "",
        md_table(
            ["stage", "status", "seconds", "note"],
            [[s["stage"], s["status"], s["seconds"], s["note"]] for s in run["stages"]],
        ),
        "",
    ]
    md = "\n".join(lines)
    atomic_write_text(out / "report.md", md)
    import markdown

    body = markdown.markdown(md, extensions=["tables"])
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>dery run report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f0f0f0}img{max-width:100%}code{background:#f5f5f5}</style></head><body>"
        + body
        + "</body></html>"
    )
    atomic_write_text(out / "report.html", html)
    return out / "report.md"


def describe(plan: dict) -> str:
    if plan.get("head_kind") == "donor":
        return f"{plan['blocks'][0]['donor']} (whole donor)"
    return " > ".join(f"{b['donor']}[{b['start']}:{b['end']}]" for b in plan["blocks"])


def _ms(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


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
    d = _donor_top1(r, run, best)
    if not mix:
        return f"The best donor that fits, {best}, reaches {d:.2f}%; no mixed plan was a finalist."
    diff = mix["top1"] - d
    word = "won" if diff >= 1 else ("tied" if diff > -1 else "lost")
    return (
        f"Best mixed plan {mix['top1']:.2f}% vs best fitting donor {best} {d:.2f}% (test): reassembly "
        f"**{word}** ({diff:+.2f} points); shipped: the pick below ({r.get('pick_kind')}), {r['top1']:.2f}%."
    )


def _spec(d: dict) -> str:
    pre = f"+{d['prefix']}" if d.get("prefix") else ""
    return f"{d['layout']} {d['channels']}x{d['height']}x{d['width']}{pre}"
