"""The pick among a budget's measured (network, target) triples and the rule that names its evidence."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import WHOLE_DONOR
from dery_deploy.pipeline.context import Context
from dery_deploy.pipeline.records import MixResult, Pick, SelectionFile, Triple
from dery_deploy.pipeline.runner import Run
from dery_deploy.pipeline.second_look import ADMITTED_DISAGREEMENT
from dery_deploy.pipeline.stages import int8_on
from dery_deploy.runtime.target import Target, is_int8
from dery_deploy.train.select.evidence import Selection, evidence_words, pick_rule


def last_rung_accuracy(s: Selection) -> dict[str, float]:
    """Each finalist's validation accuracy at the last rung the selection trained."""
    last = max((t.rung for t in s.trials), default=0)
    return {t.finalist: t.val_accuracy for t in s.trials if t.rung == last}


def score_triples(
    r: Run, ctx: Context, sel: SelectionFile, mix: MixResult | None, mix_dir: Path | None
) -> list[Triple]:
    """Every measured (network, target) finalist among the donors selection compared at its last rung and
    this budget's best mix (the one healed and shipped), with its validation accuracy on that target: the
    selection's for fp32, and for int8 the selection's plus the int8 change measured on the
    validation split by running the final network, quantized, on that runtime (a network's accuracy
    on another runtime or precision is measured, never assumed); a measured gain counts as none (on a
    few hundred images it is noise: an int8 file that scored 2.0 points above its fp32 source on 200
    validation images lost 0.26 on test)."""
    acc = last_rung_accuracy(sel.selection)
    best_mix = mix.plan.describe() if mix else None
    if mix and best_mix and best_mix not in acc and mix.selection_accuracy is not None:
        acc[best_mix] = mix.selection_accuracy  # carried from a smaller budget, where it was selected
    donor_runs = {f"{n}{WHOLE_DONOR}": Path(d.run) for n, d in r.manifest.donors.items()}
    out = []
    for f in sel.finalists:
        name, target = f.plan, f.target
        if name not in acc:
            continue
        assert f.measured is not None, "a run measures its finalists on this machine"
        donor = f.origin == "donor"
        if not donor and name != best_mix:
            continue  # of the mixed plans, only the best (healed with the final recipe) ships
        final_run = donor_runs.get(name) if donor else mix_dir
        change = 0.0
        if is_int8(target):
            if final_run is None:
                continue  # only networks trained with the final recipe are quantized and measured
            change = int8_on(final_run, ctx.task, target, ctx.model.profile.threads, "val").top1_change
        out.append(
            Triple(
                network=name,
                target=target,
                kind="donor" if donor else "mix",
                selection_accuracy=acc[name],
                int8_change=round(change, 3),
                # quantization adds no accuracy: a gain on the validation split is its noise, not a reason to pick int8
                val_accuracy=round(acc[name] + min(change, 0.0), 3),
                measured_ms=f.measured.latency_ms,
                uncertainty=f.measured.uncertainty,
            )
        )
    return out


def fewest_threads(top: Triple, triples: list[Triple]) -> Triple:
    """`top`, or the same network on the same runtime and precision at fewer threads where `top` is not faster
    than it by more than both measurements' standard errors: a count that buys no measured speed is not
    shipped (it takes cores the deployment may need, and more threads timed noisier on the 2-core VM)."""
    t = Target.parse(top.target)

    def se(x: Triple) -> float:
        return (x.uncertainty or 0.0) * x.measured_ms

    fewer = [
        o
        for o in triples
        if o.network == top.network
        and o.val_accuracy == top.val_accuracy
        and (c := Target.parse(o.target)).threads
        and t.threads
        and (c.backend, c.precision) == (t.backend, t.precision)
        and c.threads < t.threads
        and o.measured_ms - top.measured_ms <= se(o) + se(top)
    ]
    return min(fewer, key=lambda o: (Target.parse(o.target).threads or 0, o.measured_ms), default=top)


def pick_triple(triples: list[Triple], s: Selection) -> Pick:
    """The pick among triples: the best donor triple unless the best mixed triple beats it on validation by
    more than the selection's noise; between a network's targets, the more accurate, then full precision,
    then the faster, and of its thread counts the fewest that is not measurably slower (`fewest_threads`).
    An int8 target never scores above its network's fp32 one (`score_triples`), so int8 ships only a
    network that does not fit the budget in fp32 (more accurate than what does).
    The rule names the evidence: out of fold where selection cross-validated, else the validation split."""

    def best(kind: str) -> Triple | None:
        ts = [t for t in triples if t.kind == kind]
        top = max(ts, key=lambda t: (t.val_accuracy, not is_int8(t.target), -t.measured_ms, t.target), default=None)
        return fewest_threads(top, ts) if top else None

    d, m = best("donor"), best("mix")
    if d is None and m is None:
        raise DeryError("no measured finalist has a validation accuracy", "run")
    diff = m.val_accuracy - d.val_accuracy if d and m else None
    on = evidence_words(s.folds or 1)
    kind, rule = pick_rule(diff, s.noise or 0.0, on, d is not None, m is not None)
    chosen = m if kind == "mix" else d
    assert chosen is not None
    return Pick(**asdict(chosen), rule=rule)


def mix_ruled_out(r: Run, ctx: Context, sel: SelectionFile) -> Pick | None:
    """The donor pick, where selection's evidence already rules every mixed plan out, else None (the best mix
    is healed). Healing changes nothing the pick reads: a mixed triple is scored by its selection accuracy
    (less any int8 loss), and the donors' triples are known before it. So where the most accurate mixed
    finalist, or a smaller budget's mix that may be carried here, cannot beat the best donor triple beyond
    the noise even at that accuracy, the pick is that donor whatever the heal gives, and healing it would
    only cost time (a default run's largest budget: 68 s of healing, evaluating and exporting for a
    mix 10.6 points behind out of fold)."""
    s = sel.selection
    if not s.best_mix:
        return None
    acc = last_rung_accuracy(s)
    mixed = {f.plan for f in sel.finalists if f.origin != "donor"}
    best = [acc[n] for n in mixed if n in acc]
    finalists = {f.plan for f in sel.finalists}
    for prev in r.manifest.results:  # `carry_better_mix` may bring a smaller budget's mix here
        if prev.mix and prev.mix.selection_accuracy is not None and prev.mix.plan.describe() in finalists:
            best.append(prev.mix.selection_accuracy)
    donors = [t for t in score_triples(r, ctx, sel, None, None) if t.kind == "donor"]
    return donor_whatever_the_mix(donors, max(best, default=None), s.best_mix, s)


def donor_whatever_the_mix(donors: list[Triple], mix_best: float | None, mix: str, s: Selection) -> Pick | None:
    """The pick among `donors` where a mixed triple at accuracy `mix_best` (the most any mix can score here)
    would still lose to it under the pick rule, else None."""
    if mix_best is None or not donors:
        return None
    top = max(donors, key=lambda t: t.val_accuracy)
    upper = replace(top, network=mix, kind="mix", selection_accuracy=mix_best, val_accuracy=mix_best)
    pick = pick_triple([*donors, upper], s)
    return pick if pick.kind == "donor" else None


def retarget(pick: Pick, triples: list[Triple], exported_ms: float | None) -> Pick | None:
    """The same network on another of its targets, where the pick's exported file did not repeat the figure that
    won it the pick, else None.

    The pick's figure is its finalist measurement; its export times the very file that ships, minutes later.
    Where the export runs more than `ADMITTED_DISAGREEMENT` slower, the target's speed did not hold (seen twice
    on the 2-core AMD VM: OpenVINO at two threads, 0.105-0.107 ms in the run, 0.157-0.160 ms exported or in a later
    `dery bench`, while the same network at one thread repeated within 2%): the triple that won is not the one
    a user gets. The other targets of the same network with the same validation accuracy whose finalist
    figure is under the exported one are the choice, in the pick's order (full precision, then the faster).
    One target is set aside per budget: the second export is judged by the final pass like any other."""
    if exported_ms is None or exported_ms <= pick.measured_ms * (1 + ADMITTED_DISAGREEMENT):
        return None
    same = [
        t
        for t in triples
        if t.network == pick.network
        and t.target != pick.target
        and t.val_accuracy == pick.val_accuracy
        and t.measured_ms < exported_ms
    ]
    if not same:
        return None
    alt = min(same, key=lambda t: (is_int8(t.target), t.measured_ms, t.target))
    rule = (
        f"{pick.target} did not repeat: {pick.measured_ms:.4f} ms as a finalist, {exported_ms:.4f} ms exported "
        f"({exported_ms / pick.measured_ms - 1:+.0%}); the same network on {alt.target}, "
        f"{alt.measured_ms:.4f} ms as a finalist, at the same validation accuracy ({pick.rule})"
    )
    return Pick(**asdict(alt), rule=rule)
