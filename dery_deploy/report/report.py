"""The run report: report.md and report.html (rendered from the same Markdown) in the run folder."""

from __future__ import annotations

import itertools
from pathlib import Path

from dery_deploy.artifacts import atomic_write_text
from dery_deploy.report.plots import pareto_png
from dery_deploy.similarity.compute import heatmap_png


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


def write_report(out: Path, manifest, zoo, sim, part, prof, rows: list[dict]) -> Path:
    out = Path(out)
    run = manifest.to_dict()
    lines = [f"# dery run: zoo `{zoo.name}` on `{run['device']}`", ""]
    lines += [
        f"Backend `{run['backend']}` {run['precision']}, batch 1. Zoo hash `{zoo.hash()}`. "
        f"Total time {run.get('seconds', 0):.0f} s. "
        f"Task: {run['task'].get('summary', '')} (`{run['task'].get('spec')}`). "
        f"Options: `{ {k: v for k, v in run['options'].items() if k != 'out'} }`.",
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
    lat = run.get("donor_latency_ms", {})
    lines += [
        "## Zoo",
        "",
        md_table(
            ["donor", "arch", "family", "params (M)", "units", "source", "source acc (%)", f"{run['backend']} b1 (ms)"],
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
    for a, b in _heatmap_pairs(zoo, rows):
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
    for r in plans:
        lines += [f"### Budget {r['budget_ms']:g} ms", ""]
        if "infeasible" in r:
            lines += [f"Infeasible: {r['infeasible']}", ""]
            continue
        p = r["plan"]
        chain = " > ".join(f"{b['donor']}[{b['start']}:{b['end']}]" for b in p["blocks"])
        lines += [
            f"Plan: `{chain}`; "
            f"solver {p['solver'].get('name')} {p['solver'].get('status')} in "
            f"{p['solver'].get('seconds_first', 0):.3f} s "
            f"(top {p['solver'].get('top')}: {p['solver'].get('seconds_top', 0):.3f} s); proxy {p['proxy']['name']} "
            f"{p['proxy']['score']:.2f}.",
            "",
        ]
        if p["adapters"]:
            lines += [
                md_table(
                    ["after block", "adapter", "in", "out", "params"],
                    [
                        [a["after_block"], a["kind"], _spec(a["in"]), _spec(a["out"]), a["params"]]
                        for a in p["adapters"]
                    ],
                ),
                "",
            ]
        meas = r.get("measured_ms")
        mem = p["predicted"].get("memory_mb")
        rows_b = [
            [
                "reassembled (this plan)",
                f"{p['predicted']['latency_ms']:.4f}",
                f"{meas:.4f}" if meas else "-",
                f"{r['params_m']:.3f}",
                "-" if mem is None else f"{mem:.2f}",
                f"{r['top1']:.2f}",
            ]
        ]
        for n in r["donors_within_budget"]:
            d = run["donors"][n]
            rows_b.append(
                [f"donor {n}", "-", f"{d['latency_ms']:.4f}", f"{d['params_m']:.3f}", "-", f"{d['top1']:.2f}"]
            )
        lines += [
            md_table(["network", "predicted ms", "measured ms", "params (M)", "peak mem (MB)", "top-1 (%)"], rows_b),
            "",
        ]
        if r.get("phase1_top1") is not None:
            lines += [
                f"Adapters and head only (phase 1, blocks frozen): top-1 {r['phase1_top1']:.2f}%; after end-to-end "
                f"fine-tuning: {r['top1']:.2f}%.",
                "",
            ]
        if "candidates" in r:
            lines += [
                "Candidates (CP-SAT top-N, reranked by the proxy):",
                "",
                md_table(
                    ["plan", "predicted ms", "params (M)", "quality", "proxy"],
                    [[c["plan"], c["predicted_ms"], c["params_m"], c["quality"], c["proxy"]] for c in r["candidates"]],
                ),
                "",
            ]
        lines += ["Exports:", ""]
        for fmt in ("onnx", "aoti"):
            e = r.get(fmt)
            if not e:
                continue
            if "parity" in e:
                b = e.get("budget") or {}
                verdict = (
                    "not checked"
                    if not b.get("checked")
                    else ("within budget" if b["within_budget"] else "OVER BUDGET")
                )
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
        f"Donor latencies come from the profile (each donor with a {len(run['task'].get('classes', []))}-class head, "
        "measured whole); reassembled "
        "networks are measured end to end with the same backend after fine-tuning. All networks use the same "
        "data and recipe.",
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


def _spec(d: dict) -> str:
    pre = f"+{d['prefix']}" if d.get("prefix") else ""
    return f"{d['layout']} {d['channels']}x{d['height']}x{d['width']}{pre}"
