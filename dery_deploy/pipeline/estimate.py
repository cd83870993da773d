"""How long the rest of a run will take on this machine: made once the profiles have timed it, said up
front, kept current as stages finish, and recorded against what each stage took.

The estimate is work times this machine's speed at it, both counted here:
- training: images through a network's training step (recipe epochs x labelled images, plus the
  distillation and seam-matching images; phase 1 forward only), times the seconds per image of that
  network's step, timed now on a few real steps of each donor at the labelled batch and at a distilling
  step's larger one (`step_seconds`); seam matching trains only the adapters, so its images cost a
  forward pass; a reassembled network under a budget costs what the donors that fit it cost (their
  median; every donor's where none fits): its blocks come from them. Its predicted latency is no
  guide: a 0.3 ms mix of resnet blocks under a 0.75 ms budget trained as fast as resnet, 4x faster
  than the budget's latency at the donors' seconds per ms (one default run, AMD EPYC 2 cores);
- selection: the successive-halving schedule's trials (every finalist at the first rung, the survivors
  at the last, over its folds) at the rung recipe, less those of donors a smaller budget trained already;
- evaluation: the test images through the network in eval mode and large batches (`EVAL_SHARE` of a
  training step: fitted on five donors' evaluations, 18.8 s estimated against 18.7 s taken);
- measurement: the items a pass times, at the seconds per item the profiles just took, each of a later
  pass worth a few profile items (`PAIR_ITEMS`, `EXPORT_ITEMS`: it is exported and built on its own).
Phase 1 may end early at a plateau, so training is an upper bound; `Eta` scales what is left by how the
finished stages compared with their estimates. Work the run is expected to skip is held out of the total
(`expected.py`): the final training of donors the short recipe will leave out, and the best mix's heal at
budgets where the donor the probe rates best fits (selection then rules every mix out; a default run on the
Xeon host counted two such heals and their final-pass pairs, 105 s of a 555 s run, and was 34% over).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dery_deploy.assemble.candidates import donor_near
from dery_deploy.assemble.stage import FINALISTS
from dery_deploy.data.task import Task
from dery_deploy.deploy.bench import WARMUP_S
from dery_deploy.pipeline.final_pass_file import LOOK_SECONDS, REMEASURE_SECONDS, REMEASURES
from dery_deploy.pipeline.records import STEPS_TIMED, GroupTime, Part, RunEstimate, minutes
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select.halving import ETA, SCREEN_FOLDS, default_folds, rung_recipe

WARMUP_STEPS = 2
# under --time-limit: fewer steps, after one warm-up, and the distilling step not timed apart (its cost per
# image taken as the labelled step's, an upper bound): on a machine made 4-6x slower, timing every donor's
# steps in full took 203 s of a 10-minute limit
HURRIED_STEPS = 2
# a distilling step's larger batch (222 images in the default recipe) costs ~5x a labelled step: one warm-up
# and three timed steps, 8.8 s for the six fashion donors against 15.2 s for two and five, with seconds per
# image within 1-7% of theirs (AMD EPYC 2 cores)
DISTILL_STEPS = (1, 3)
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training step (backward ~ 2x forward)
EVAL_SHARE = 0.2  # an evaluation image's share of a training image (no_grad, eval mode, large batches)
# what a stage that measures costs, in profile items (the profiles' seconds per item, building included):
# a profile times many items per pass, the later passes few, each also exported from its checkpoint and
# built in a fresh measurement worker (fitted on a quick and a default run, AMD EPYC 2 cores, 0.4-0.56 s
# per profile item: an export 3.2-4.7 s; the final pass 19 s for 7 pairs, 34 s for 27 pairs)
EXPORT_ITEMS = 8  # one export: ONNX from the checkpoint, parity, its own measurement pass
PAIR_ITEMS = 2  # one (network, target) pair of the finalists' or the final pass
PASS_ITEMS = 12  # a later pass's own start: a measurement worker, the machine's reference workload
# shipped packages whose first look was a suspect (`second_look.ship_suspects`), looked at again, on the Intel
# Xeon host: 1 of 7 at d672ea2 and before (three quick runs, a default run, bench_reproduce's three runs), then
# 4 of 6 at 30d3891-b7422a1 (bench_estimate's quick and default runs, whose final measurements took 33 and 63 s
# where 9 and 16 s are a pass and its looks without one, and bench_reproduce's three batch-32 runs, one): 5 of 13
SUSPECT_SHARE = 5 / 13
REMEASURE_ITEMS = 8  # a shipped file's share of the final pass's re-measurements (its export, a worker's start)


def step_seconds(
    model: nn.Module, task: Task, batch: int, seed: int = 0, steps: int = STEPS_TIMED, warmup: int = WARMUP_STEPS
) -> float:
    """Seconds per image of one real training step of `model` (forward, backward, AdamW) at `batch` images
    of the task's size, the median of `steps` steps after `warmup` untimed ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *task.train.images.shape[1:], generator=g)
    y = torch.randint(0, task.num_classes, (batch,), generator=g)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] / batch


def training_seconds(recipe: Recipe, labelled: int, seams: bool, per_image: float, per_distilled: float) -> float:
    """A recipe's training time: its epochs over the labelled images at `per_image` and, where it distils,
    over the teacher's pool at `per_distilled` (those come in larger batches); phase 1 at FORWARD_SHARE (its
    blocks are frozen, so only the forward pass runs through them); seam matching, where the network has
    seams, at FORWARD_SHARE too (it trains the adapters alone). An upper bound where phase 1 stops early at
    its plateau."""
    steps = math.ceil(labelled / recipe.batch)
    distilled = steps * math.ceil(recipe.distill_images / steps) if recipe.distill else 0
    epochs = FORWARD_SHARE * recipe.epochs_adapter + recipe.epochs_full
    match = recipe.match_epochs * recipe.match_images if seams else 0
    return epochs * (labelled * per_image + distilled * per_distilled) + match * per_image * FORWARD_SHARE


def distill_batch(recipe: Recipe, labelled: int) -> int:
    """The teacher's images a distilling step adds to its labelled batch."""
    return math.ceil(recipe.distill_images / math.ceil(labelled / recipe.batch)) if recipe.distill else 0


def selection_trials(
    mixes: int, donors: int, rungs: tuple[int, ...], folds: int, seen: int = 0, carried: int = 0
) -> list[tuple[int, int]]:
    """(rung, trials trained) of the successive-halving schedule: every finalist at the first rung (screened
    on SCREEN_FOLDS folds unless it is the last), then the best 1/ETA, plus the best of the other kind where
    there are both (the best overall is among the 1/ETA). A network that was a finalist at a smaller budget of
    the run trains nothing again (its trials are read back, `train.select.trial`): `seen` donors and `carried`
    mixes skip their first rung, and the best of each kind, where there is one, its later ones."""
    out, alive = [], mixes + donors
    both = 1 if mixes and donors else 0
    for r in range(len(rungs)):
        per = folds if r == len(rungs) - 1 else min(SCREEN_FOLDS, folds)
        again = seen + carried if r == 0 else min(seen, 1) + min(carried, 1)
        out.append((r, max(0, alive - again) * per))
        alive = min(alive, math.ceil(alive / ETA) + both)
    return out


@dataclass
class Plan:
    """What the rest of the run will do, as far as it is known after the profiles."""

    budgets: list[float]
    donor_ms: dict[str, float]
    teacher_pool: list[str]
    final_donors: list[str]
    ce: Recipe
    final: Recipe
    rungs: tuple[int, ...]
    targets: int
    finalists: int = FINALISTS
    exports_per_budget: int = 2  # the shipped file and the best mix's ONNX
    step_s: dict[str, float] = field(default_factory=dict)
    # donor -> seconds per image of a step that also distils (a larger batch: cheaper per image)
    distill_s: dict[str, float] = field(default_factory=dict)
    teacher_images: int = 8192  # the teacher's pool of unlabelled images (its logits are computed once)
    budgets_chosen: bool = True  # the run chose its budgets (a user's are never cut)
    searched_targets: int = 0  # targets carried into selection (`target_stage.py`; 0: all `targets`)
    folds: int | None = None  # selection's folds (None: the task's default; 1: the validation split decides)
    test_fifth: bool = False  # test accuracy on a stratified fifth of the test split (`Task.with_test_fifth`)
    family: str | None = None  # --family: how its paths train ("joint" | "frozen"); None: no family
    # final donors the short recipe is expected to leave out (`budgets.expected_dominated`; once it has
    # trained, those it did): their final training, evaluation and final-pass pairs are held out of the total
    expected_left_out: list[str] = field(default_factory=list)
    # budgets at which selection is expected to rule the mix out (`budgets.expected_unhealed`): the best mix's
    # heal, evaluation and export are held out there
    expected_unhealed: list[float] = field(default_factory=list)
    # count every budget's heal, none expected read back: under --time-limit, whose cuts must fit the worst case
    every_heal: bool = False

    def key(self) -> dict:
        """What an estimate depends on (not the step timings it adds, nor the donors it expects left out: made
        from the task's probe where the estimate is made, and read back from a reused one)."""
        made_here = ("step_s", "distill_s", "expected_left_out", "expected_unhealed")  # (the read-back heals follow
        # from the budgets and `every_heal`, which are in the key)
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k not in made_here}))


def estimate(plan: Plan, task: Task, item_s: float, after_s: float) -> RunEstimate:
    """The rest of the run (module docstring)."""
    n_train, n_test = len(task.train), len(task.test) // (5 if plan.test_fifth else 1)

    def at_budget(times: dict[str, float], b: float) -> float:
        """A network's seconds per image under budget `b`: the median over the donors that fit it (every
        donor where none does)."""
        fit = [n for n in times if plan.donor_ms.get(n, math.inf) <= b] or list(times)
        return statistics.median(times[n] for n in fit) if fit else 0.0

    parts: list[Part] = []

    def train(stage: str, recipe: Recipe, per_image: float, per_distilled: float, seams: bool) -> Part:
        return Part(stage, "training", training_seconds(recipe, n_train, seams, per_image, per_distilled))

    def evaluate(stage: str, per_image: float) -> Part:
        return Part(stage, "evaluation", n_test * per_image * EVAL_SHARE)

    for n in sorted(plan.teacher_pool if plan.final.distill else [], key=lambda n: plan.donor_ms[n]):
        parts.append(train(f"fine-tune donor {n} (ce", plan.ce, plan.step_s[n], plan.step_s[n], False))
    # the short recipe decides which donors to leave out only where it runs (the final recipe distils)
    left_out = [n for n in plan.expected_left_out if n in plan.final_donors] if plan.final.distill else []
    held: list[Part] = []
    unhealed = [b for b in plan.budgets if b in plan.expected_unhealed]
    # the best mix of a budget after the first that heals one is expected to be that one, read back
    # (`pipeline/budget.healed_before`): in 12 of 15 such budgets of the quality bench's runs it was
    healing = [b for b in plan.budgets if b not in unhealed]
    read_back = [] if plan.every_heal else healing[1:]
    for n in sorted(plan.final_donors, key=lambda n: plan.donor_ms[n]):
        kept = len(parts)
        final = train(
            f"fine-tune donor {n} (final", plan.final, plan.step_s[n], plan.distill_s.get(n, plan.step_s[n]), False
        )
        parts += [final, evaluate(f"evaluate donor {n}", plan.step_s[n])]
        if n in left_out:
            held += parts[kept:]
            del parts[kept:]
    trained = [n for n in plan.final_donors if n not in left_out]
    for b in plan.budgets:
        mix_s, mix_distilled_s = at_budget(plan.step_s, b), at_budget(plan.distill_s or plan.step_s, b)
        before = [x for x in plan.budgets if x < b]
        # (matched by the start of the stage's name alone: a budget the run raises keeps its part)
        seconds = selection_seconds(plan, task, b, item_s, mix_s, before, trained)
        parts.append(Part("assemble and select under", "selection", seconds))
        export = Part("export", "measurement", EXPORT_ITEMS * item_s)
        mix = [train("heal", plan.final, mix_s, mix_distilled_s, True), evaluate("evaluate best mix", mix_s), export]
        (held if b in unhealed or b in read_back else parts).extend(mix)
        parts += [export] * (plan.exports_per_budget - 1)
    if plan.family and len(plan.budgets) >= 2:
        step = [at_budget(plan.step_s, b) for b in plan.budgets]
        parts += family_parts(
            plan, (n_train, n_test), item_s, step, [at_budget(plan.distill_s or plan.step_s, b) for b in plan.budgets]
        )
    parts.append(
        final_pass_part(plan, len(plan.final_donors) - len(left_out), len(plan.budgets) - len(unhealed), item_s)
    )
    est = RunEstimate(round(after_s, 1), parts, plan.step_s, round(item_s, 3), plan.distill_s)
    est.expected_left_out, est.held_out, est.expected_unhealed = left_out, held, unhealed
    est.expected_read_back = read_back
    return est


def selection_seconds(
    plan: Plan, task: Task, b: float, item_s: float, mix_s: float, before: list[float], donors: list[str]
) -> float:
    """Assembly and selection under budget `b`: the finalists' measurement pass and selection's trials.
    `donors` are the ones the run trains to ship; those that fit a budget `before` this one were finalists
    there already, so selection reads their trials back."""
    fit = [n for n in donors if plan.donor_ms[n] <= b]
    seen = sum(plan.donor_ms[n] <= max(before, default=0.0) for n in fit)
    # a trained donor near the budget but over it is measured too (`candidates.DONOR_TRAINED_NEAR`), and the
    # finalists' measurement drops it before selection
    near = sum(plan.donor_ms[n] > b and donor_near(plan.donor_ms[n], b, True) for n in donors)
    pairs = (plan.searched_targets or plan.targets) * (plan.finalists + len(fit) + near)
    seconds = (PASS_ITEMS + pairs * PAIR_ITEMS) * item_s  # the finalists' measurement pass
    # a trial trains on (k-1)/k of train + validation, or on train where the validation split decides
    folds, n_train = plan.folds or default_folds(task), len(task.train)
    labelled = (n_train + len(task.val)) * (folds - 1) / folds if folds > 1 else n_train
    # mixed finalists of a smaller budget come back as candidates (`Context.carried`), with the same fitted
    # weights: at the quality bench's pinned budgets 3-4 of a later budget's 4 were, at a default run's budget
    # three times the one before it 1 of 4; half is expected
    carried = plan.finalists // 2 if before else 0
    for rung, trials in selection_trials(plan.finalists, len(fit), plan.rungs, folds, seen, carried):
        r = rung_recipe(plan.ce, rung, plan.rungs)
        seconds += trials * training_seconds(r, int(labelled), True, mix_s, mix_s)
    return seconds


def final_pass_part(plan: Plan, donors: int, mixes: int, item_s: float) -> Part:
    """The final pass: every trained donor and every healed best mix (`mixes`) on every target, and each shipped
    package; each package then looked at alone as `dery bench` measures it (warm-up, then LOOK_SECONDS), and a
    SUSPECT_SHARE of them looked at REMEASURES more times."""
    compared = plan.targets * (donors + mixes) + len(plan.budgets)
    look = REMEASURE_ITEMS * item_s + WARMUP_S
    again = SUSPECT_SHARE * REMEASURES * (look + REMEASURE_SECONDS)
    remeasure = len(plan.budgets) * (look + LOOK_SECONDS + again)
    return Part("final measurement", "measurement", (PASS_ITEMS + compared * PAIR_ITEMS) * item_s + remeasure)


def family_parts(
    plan: Plan, images: tuple[int, int], item_s: float, step_s: list[float], distill_s: list[float]
) -> list[Part]:
    """`--family`'s stages (`pipeline.family`), one path per budget: the paths measured untrained in one pass;
    trained jointly (one stage, every path's step at every step: the sum of their costs) or each fine-tuned
    (frozen: the largest in full, the smaller ones alike, the shared blocks' backward saved is not counted);
    each evaluated; then written, each exported and checked, and timed in one interleaved pass (at least
    `deploy.bench`'s DEFAULT_SECONDS of each path's own calls after its warm-up)."""
    from dery_deploy.deploy.bench import DEFAULT_SECONDS, WARMUP_S

    (n_train, n_test), paths = images, len(step_s)
    parts = [Part("family: measure", "measurement", (PASS_ITEMS + paths * PAIR_ITEMS) * item_s)]
    if plan.family == "joint":
        parts.append(
            Part("family: train", "training", training_seconds(plan.final, n_train, True, sum(step_s), sum(distill_s)))
        )
    else:
        parts += [
            Part("family: fine-tune", "training", training_seconds(plan.final, n_train, True, s, d))
            for s, d in zip(step_s, distill_s)
        ]
    parts += [Part("evaluate family path", "evaluation", n_test * s * EVAL_SHARE) for s in step_s]
    write = paths * (EXPORT_ITEMS * item_s + DEFAULT_SECONDS + WARMUP_S)
    return parts + [Part("write family", "measurement", write)]


# the ETA's scale counts this share of the whole estimate as already finished on time: one short stage far
# off its estimate does not rescale the whole run (a clean-clone run's first 34 s part took 166 s on a
# loaded machine, and the line said "about 412 min left" of an 86-minute estimate)
ETA_PRIOR_SHARE = 0.1


class Eta:
    """The whole run's remaining time as stages finish: the estimate of the parts not yet done, scaled by
    how long the finished parts took against their estimates, shrunk towards 1 by ETA_PRIOR_SHARE of the
    whole estimate (1 until one has finished)."""

    def __init__(self, est: RunEstimate):
        self.est = est
        self.todo = list(est.parts)
        self.done: list[tuple[Part, float]] = []
        self.prior_s = ETA_PRIOR_SHARE * sum(p.seconds for p in est.parts)

    def finished(self, stage: str, seconds: float, reused: bool = False) -> bool:
        """Mark the first part not yet done whose name `stage` starts with as done in `seconds` (a reused
        stage is done without counting towards the scale); whether one was."""
        for p in self.todo:
            if stage.startswith(p.stage):
                self.todo.remove(p)
                if not reused:
                    self.done.append((p, seconds))
                return True
        return False

    @property
    def ratio(self) -> float:
        est = sum(p.seconds for p, _ in self.done)
        if est <= 1.0:
            return 1.0
        return (sum(s for _, s in self.done) + self.prior_s) / (est + self.prior_s)

    def left_s(self) -> float:
        return self.ratio * sum(p.seconds for p in self.todo)

    def line(self, elapsed_s: float) -> str:
        return f"run: {minutes(elapsed_s)} so far, about {minutes(self.left_s())} left"

    def record(self) -> dict[str, GroupTime]:
        """Per group: estimated and actual seconds of the parts that ran, for run.json and the report."""
        out: dict[str, GroupTime] = {}
        for p, s in self.done:
            g = out.setdefault(p.group, GroupTime())
            g.estimated_s = round(g.estimated_s + p.seconds, 1)
            g.actual_s = round(g.actual_s + s, 1)
        return out


def item_seconds(stages: list, models: list) -> float:
    """Seconds per measured item on this machine, building included: the profiles' wall time over the
    items they hold (profiles reused from an earlier run: their passes' timed seconds, doubled for the
    building they leave out)."""
    wall = [s.seconds for s in stages if s.stage.startswith("profile ") and s.status == "computed"]
    items = sum(len(m.profile.records) for m in models)
    if wall and len(wall) == len(models) and items:
        return sum(wall) / items
    passes = [p for m in models for p in m.profile.passes]
    timed, n = sum(p.get("seconds", 0.0) for p in passes), sum(p.get("items", 0) for p in passes)
    return 2 * timed / n if n else 1.0


def make_estimate(
    plan: Plan, zoo, task: Task, stages: list, models: list, after_s: float, seed: int, hurried: bool = False
) -> RunEstimate:
    """Time a few training steps of every donor the run will train, then estimate the rest (`estimate`);
    `hurried` (under --time-limit): HURRIED_STEPS each, the distilling step not timed apart."""
    from dery_deploy.runtime.resources import MachineLoad
    from dery_deploy.train.source import FinetuneSource
    from dery_deploy.train.trainer import build_model

    steps, warmup = (HURRIED_STEPS, 1) if hurried else (STEPS_TIMED, WARMUP_STEPS)
    load = MachineLoad()
    load.start()
    for n in sorted(set(plan.teacher_pool) | set(plan.final_donors)):
        model = build_model(FinetuneSource.of_donor(n), zoo, num_classes=task.num_classes)
        plan.step_s[n] = step_seconds(model, task, plan.final.batch, seed, steps, warmup)
        if plan.final.distill:
            big = plan.final.batch + distill_batch(plan.final, len(task.train))
            warm, timed = DISTILL_STEPS
            plan.distill_s[n] = plan.step_s[n] if hurried else step_seconds(model, task, big, seed, timed, warm)
    est = estimate(plan, task, item_seconds(stages, models), after_s)
    est.other_load_cores, est.steps_timed = load.stop(), steps
    return est
