"""The one latency arithmetic: an assembled network's latency from a profile.

    predicted = scale * (overhead + sum over items of (item - overhead))      (subtracting)
    predicted = scale * (sum over items of item)                              (not subtracting)

With `context`, a block's item is its donor's prefix ending after it less the prefix ending before it
(`prefix|` records: the donor's units from the input, timed whole), instead of the block timed alone:
a block inside a network runs with the caches and memory traffic of the network around it, which a
block alone does not see (assembled networks ran 1.2-1.5x the sum of their isolated items).

Items are summed at their medians; a network's p90 or p99 of single calls (`--percentile`) is
predicted by a scale of its own, fitted on the measured assemblies' p90 / p99 like the median's.

A whole donor is one item, timed whole: it has no parts, so neither the per-call overhead rule nor the
sum-of-parts scale applies to it, and it is predicted as its own median (at p90 / p99, times the
check's tail: that percentile's scale over the median's). On the Xeon host's OpenVINO INT8 profile the
assemblies' scale was 1.406; applied to resnet10t_tops, measured 0.1008 ms whole, it predicted 0.142 ms,
and the same file then measured 0.099-0.102 ms as a finalist.

Each item was timed as its own call, so every record carries one per-call overhead (Python and
framework dispatch, a session run, a graph launch) that the whole network pays once; `overhead` is
the profile's measured near-empty item. Where the parts are device-bound (CUDA graphs on a GPU),
they pay almost none of that overhead and subtracting it predicts mixes too fast, so whether to
subtract is chosen by the latency check too. `speed` says whether item latencies are taken raw or
scaled to the profile's reference machine speed (`runtime/calibration.py`), and `scale` corrects
the sum-of-parts bias (e.g. eager whole networks run slower than their blocks added up); both are
chosen by `dery profile --verify` from measured assemblies, whichever predicts them better.

Everything is in one integer time unit, `UNITS_PER_MS` per millisecond, scaled once here (`to_us`;
the `_us` names predate the finer unit): the integer program, the exact DP, the brute-force check and
the plan's predicted latency all add up the same integers.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

from dery_deploy.errors import DeryError
from dery_deploy.network.items import block_span
from dery_deploy.profile.store import LatencyCheck, PercentileFit, Profile, VerifyRow

# The program's integer time unit: 10 ns. GPU items cost 1-20 us each, so whole microseconds rounded
# each by up to 0.5 us, about 5% of a small assembly; at 10 ns the rounding is 0.05% of a 10 us item.
UNITS_PER_MS = 100_000


def to_us(ms: float) -> int:
    """Milliseconds -> the program's integer time unit (`UNITS_PER_MS` per ms)."""
    return int(round(ms * UNITS_PER_MS))


def budget_us(ms: float) -> int:
    """A budget in the program's integer unit, rounded down: a plan within it is within the budget."""
    return int(math.floor(ms * UNITS_PER_MS + 1e-9))


def us_to_ms(units: int) -> float:
    """The program's integer unit -> milliseconds."""
    return units / UNITS_PER_MS


@dataclass
class LatencyModel:
    profile: Profile
    speed: str = "raw"  # raw | calibrated
    scale: float = 1.0
    path: str = "the profile"
    how_to: str | None = None  # the command that measures missing items, as the caller knows it (zoo path, --data)
    percentile: int = 50  # of single calls: what the prediction is of
    subtract_overhead: bool = True  # each part less the per-call overhead (False: parts summed as measured)
    context: bool = False  # blocks as differences of their donor's prefixes (module docstring)
    threads_named: bool = False  # the run searches several thread counts: its target is named with its count
    tail: float = 1.0  # the check's scale at `percentile` over its scale at the median (1 at the median)

    def __post_init__(self) -> None:
        cals = [r.calibration_ms for r in self.profile.records.values() if r.calibration_ms]
        self._reference = statistics.median(cals) if cals else None
        keys = [k for k in self.profile.records if k.startswith("overhead|")] if self.subtract_overhead else []
        self._overhead = min((self.item_ms(k) for k in keys), default=0.0)
        failed = set(self.profile.failed)
        self._prefix = {
            span[0:1] + span[2:]: k
            for k in self.profile.records
            if k.startswith("prefix|") and k not in failed and (span := block_span(k))
        }

    @classmethod
    def of(cls, profile: Profile, path: str = "the profile", percentile: int = 50) -> LatencyModel:
        """The model as the profile's latency check chose it (raw and unscaled if never verified), for
        a per-call percentile."""
        v = profile.verify
        if percentile != 50 and not (v and f"p{percentile}" in v.percentiles):
            raise DeryError(
                f"{path} has no latency check at the {percentile}th percentile; run `dery profile ... --verify N` "
                "with this version to measure it",
                "profile",
            )
        scale = v.at(percentile)[0] if v else 1.0
        subtract = v.subtract_overhead if v else True
        speed = v.speed if v else "raw"
        context = v.context if v else False
        tail = scale / v.scale if v and v.scale > 0 else 1.0
        return cls(
            profile,
            speed,
            scale,
            str(path),
            percentile=percentile,
            subtract_overhead=subtract,
            context=context,
            tail=tail,
        )

    def reference_ms(self) -> float | None:
        """The profile's typical machine speed: the median reference latency over its records."""
        return self._reference

    def item_ms(self, key: str, field: str = "median_ms") -> float:
        """A record's latency on the model's speed basis (no bias correction)."""
        self.require([key])
        r = self.profile.records[key]
        ms = getattr(r, field)
        if self.speed == "calibrated":
            ref = self.reference_ms()
            if ref and r.calibration_ms:
                ms *= ref / r.calibration_ms
        return ms

    def overhead_ms(self) -> float:
        return self._overhead

    def base_us(self) -> int:
        """What a network pays once: the per-call overhead."""
        return to_us(self.scale * self.overhead_ms())

    def cost_us(self, key: str) -> int:
        """What one item adds to a network: its latency less the per-call overhead (a block in context:
        the difference of its donor's prefixes)."""
        return to_us(self.scale * self.cost_ms(key))

    def cost_ms(self, key: str) -> float:
        prefixes = self.context_keys(key) if self.context else None
        if prefixes is None:
            return self.item_ms(key) - self.overhead_ms()
        after, before = prefixes
        return self.item_ms(after) - (self.item_ms(before) if before else self.overhead_ms())

    def context_keys(self, key: str) -> tuple[str, str | None] | None:
        """(prefix ending after, prefix ending before or None at the input) of a block key, where the
        profile holds both; None for other items and blocks without them (then timed alone)."""
        span = block_span(key) if key.startswith("block|") else None
        if span is None:
            return None
        arch, start, end = span
        after, before = self._prefix.get((arch, end)), self._prefix.get((arch, start)) if start else None
        return (after, before) if after and (before or not start) else None

    def predict_us(self, keys: list[str]) -> int:
        self.require(keys)
        if len(keys) == 1 and keys[0].startswith("donor|"):  # measured whole (module docstring)
            return to_us(self.tail * self.item_ms(keys[0]))
        return self.base_us() + sum(self.cost_us(k) for k in keys)

    def has_context(self, keys: list[str]) -> bool:
        """Does the profile hold the prefixes of every block among `keys`?"""
        return all(self.context_keys(k) for k in keys if k.startswith("block|"))

    def predict_ms(self, keys: list[str]) -> float:
        return us_to_ms(self.predict_us(keys))

    def memory_mb(self, keys: list[str]) -> float | None:
        """Peak memory of the chain: the largest item peak (activations are freed between items);
        None where the backend could not measure memory."""
        peaks = [self.profile.records[k].peak_memory_mb for k in keys]
        known = [p for p in peaks if p is not None]
        return max(known, default=0.0) if len(known) == len(peaks) else None

    def require(self, keys: list[str]) -> None:
        missing = [k for k in keys if k not in self.profile.records]
        if missing:
            raise DeryError(
                f"{self.path} lacks {len(missing)} item(s) that are needed, e.g. {missing[0]!r}; run "
                f"{self.how_to or self.profile.how_to_profile()} on the current partition",
                "profile",
            )


def _loo_errors(pred: list[float], meas: list[float], correct: bool) -> list[float]:
    """Relative errors (predicted - measured) / measured; with `correct`, each prediction is scaled by
    the median measured/predicted ratio of the *other* rows (leave-one-out, so the fit cannot flatter)."""
    ratios = [m / p for p, m in zip(pred, meas)]
    out = []
    for i, (p, m) in enumerate(zip(pred, meas)):
        s = statistics.median(ratios[:i] + ratios[i + 1 :]) if correct and len(ratios) > 1 else 1.0
        out.append((s * p - m) / m)
    return out


def _predicted(rows: list[VerifyRow], speed: str, subtract: bool, context: bool = False) -> list[float]:
    """The rows' predictions on a speed basis, with the per-call overhead subtracted per part or not,
    blocks timed alone or in context."""
    if context:
        return [(r.raw_context_ms if speed == "raw" else r.calibrated_context_ms) or 0.0 for r in rows]
    if subtract:
        return [r.raw_predicted_ms if speed == "raw" else r.calibrated_predicted_ms for r in rows]
    return [(r.raw_sum_ms if speed == "raw" else r.calibrated_sum_ms) or 0.0 for r in rows]


def _percentile_check(
    rows: list[VerifyRow], speed: str, subtract: bool, percentile: int, context: bool
) -> PercentileFit:
    """Scale, leave-one-out errors and p90 under-prediction of predicting a network's p90 / p99 from its
    items' medians (on the speed basis, overhead rule and block timing the median's check chose)."""
    pred = _predicted(rows, speed, subtract, context)
    ratio = [
        (r.measured_at_reference_ms / r.measured_ms) if speed == "calibrated" and r.measured_ms else 1.0 for r in rows
    ]
    meas = [r.measured_at(percentile) * f for r, f in zip(rows, ratio)]
    errs = _loo_errors(pred, meas, True)
    return PercentileFit(
        scale=round(statistics.median(m / p for p, m in zip(pred, meas)), 5),
        median_abs_rel_error=round(statistics.median(abs(e) for e in errs), 5),
        max_abs_rel_error=round(max(abs(e) for e in errs), 5),
        p90_under_prediction=round(_p90_under(errs), 5),
    )


def _p90_under(errs: list[float]) -> float:
    under = sorted(max(0.0, -e / (1 + e)) for e in errs)  # measured/predicted - 1 where a network ran slower
    return under[min(len(under) - 1, int(round(0.9 * (len(under) - 1))))]


# median |errors| closer than this are a tie, decided by the max |error| (a promise's margin is set by the tail):
# four runs of scripts/bench_latency_model.py within an hour on this EPYC gave ONNX Runtime's chosen model a
# median of 0.9, 1.5, 2.1 and 2.7%, while on OpenVINO int8 blocks alone kept missing one network by 11-12%
# and blocks in context by 7-11%, at medians 0.1-0.7 points apart
MEDIAN_TIE = 0.01
Variant = tuple[str, bool, bool, bool]  # speed, correct (the bias scale), subtract the overhead, blocks in context


def _variants(rows: list[VerifyRow]) -> dict[Variant, tuple[float, float, float, list[float]]]:
    """(speed, correct, subtract, context) -> (median |error|, max |error|, scale, leave-one-out errors) of
    every model the rows can judge; not subtracting is tried only where every row holds the plain sums,
    blocks in context only where every row holds their prefixes (always less the overhead)."""
    sums = all(r.raw_sum_ms and r.calibrated_sum_ms for r in rows)
    context = all(r.raw_context_ms and r.calibrated_context_ms for r in rows)
    kinds = [(True, False)] + ([(False, False)] if sums else []) + ([(True, True)] if context else [])
    out = {}
    for subtract, ctx in kinds:
        for speed in ("raw", "calibrated"):
            pred = _predicted(rows, speed, subtract, ctx)
            meas = [r.measured_ms if speed == "raw" else r.measured_at_reference_ms for r in rows]
            for correct in (False, True):
                errs = _loo_errors(pred, meas, correct)
                scale = statistics.median(m / p for p, m in zip(pred, meas)) if correct else 1.0
                out[(speed, correct, subtract, ctx)] = (
                    statistics.median(abs(e) for e in errs),
                    max(abs(e) for e in errs),
                    scale,
                    errs,
                )
    return out


def _best(variants: dict, order: list[Variant]) -> Variant:
    """The lowest median |error|, where medians within MEDIAN_TIE of it are a tie that the lower max decides."""
    low = min(variants[v][0] for v in order)
    tied = [v for v in order if variants[v][0] <= low + MEDIAN_TIE]
    return min(tied, key=lambda v: (round(variants[v][1], 4), round(variants[v][0], 4), order.index(v)))


def fit_latency_check(rows: list[VerifyRow], seed: int, partition_key: str) -> LatencyCheck:
    """Choose the speed basis (raw or calibrated), whether to correct the sum-of-parts bias and whether
    to subtract the per-call overhead per part, by which predicts the measured assemblies best (median
    |error|, medians within `MEDIAN_TIE` decided by the max, both leave-one-out); its median is never more
    than `MEDIAN_TIE` worse than raw's."""
    variants = _variants(rows)
    # ties go to the simpler model: raw before calibrated, uncorrected before corrected, the rule profiles
    # were made with before (subtracting, blocks alone) before not subtracting, and blocks alone before in context
    kinds = [(True, False), (False, False), (True, True)]
    order = [(s, c, sub, ctx) for sub, ctx in kinds for s in ("raw", "calibrated") for c in (False, True)]
    order = [v for v in order if v in variants]
    best = _best(variants, order)
    med, mx, scale, errs = variants[best]

    def errors_of(context: bool) -> list[float] | None:
        kind = [v for v in order if v[3] == context]
        return [round(x, 5) for x in variants[_best(variants, kind)][:2]] if kind else None

    chosen_pred = [p * scale for p in _predicted(rows, best[0], best[2], best[3])]
    out_rows = [replace(r, predicted_ms=round(p, 5), rel_error=round(e, 5)) for r, p, e in zip(rows, chosen_pred, errs)]
    tails = all(r.measured_p90_ms and r.measured_p99_ms for r in rows)
    return LatencyCheck(
        len(rows),
        seed,
        best[0],
        round(scale, 5),
        round(med, 5),
        round(mx, 5),
        round(_p90_under(errs), 5),
        round(variants[("raw", False, True, False)][0], 5),
        round(variants[("raw", False, True, False)][1], 5),
        round(variants[("calibrated", False, True, False)][0], 5),
        round(variants[("calibrated", False, True, False)][1], 5),
        partition_key,
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        out_rows,
        {f"p{q}": _percentile_check(rows, best[0], best[2], q, best[3]) for q in (90, 99)} if tails else {},
        subtract_overhead=best[2],
        context=best[3],
        isolated_errors=errors_of(False),
        context_errors=errors_of(True),
    )
