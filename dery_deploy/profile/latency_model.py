"""Predicting an assembled network's latency from a profile.

predicted = sum(blocks) + sum(adapters) + head - (items - 1) * overhead

Each item was timed as its own call, so every record carries one per-call overhead (Python and
framework dispatch, a session run, a graph launch); the whole network pays it once. `overhead` is
the profile's measured near-empty item. Every record is first scaled to the profile's reference
machine speed (`calibration.py`). `dery profile --verify` measures how far this is off.
"""

from __future__ import annotations

from dery_deploy.errors import DeryError
from dery_deploy.profile.calibration import reference_ms, speed_factor
from dery_deploy.profile.items import adapter_key, block_key, head_key


def plan_items(plan, zoo, dissections) -> list[str]:
    from dery_deploy.assemble.plan import stitch_specs

    keys = []
    for b in plan.blocks:
        keys.append(block_key(zoo, b.donor, b.start, b.end, dissections[b.donor].boundary_spec(b.start)))
    for s in stitch_specs(plan, dissections):
        if s is not None:
            keys.append(adapter_key(*s))
    last = plan.blocks[-1]
    keys.append(head_key(dissections[last.donor].boundary_spec(last.end), plan.num_classes))
    return keys


def overhead_ms(profile: dict) -> float:
    ref = reference_ms(profile)
    recs = [r for k, r in profile["records"].items() if k.startswith("overhead|")]
    return min((r["median_ms"] * speed_factor(r, ref) for r in recs), default=0.0)


def item_ms(profile: dict, key: str, field: str = "median_ms", ref: float | None = None) -> float:
    """A record's latency at the profile's reference machine speed."""
    r = profile["records"][key]
    return r[field] * speed_factor(r, reference_ms(profile) if ref is None else ref)


def predict(keys: list[str], profile: dict, field: str = "median_ms", path: str = "the profile") -> float:
    missing = [k for k in keys if k not in profile["records"]]
    if missing:
        raise DeryError(f"{path} lacks {len(missing)} item(s) the plan needs, e.g. {missing[0]!r}; run `dery profile "
                        f"--zoo {profile['zoo']} --device {profile['device']} --backend {profile['backend']} "
                        f"--precision {profile['precision']} --batch {profile['batch']}` on the current partition", "profile")
    ref = reference_ms(profile)
    total = sum(item_ms(profile, k, field, ref) for k in keys)
    return max(total - (len(keys) - 1) * overhead_ms(profile), 1e-6)


def predict_memory_mb(keys: list[str], profile: dict) -> float:
    """Peak memory of the chain: the largest item peak (activations are freed between items)."""
    return max((profile["records"][k].get("peak_memory_mb") or 0.0) for k in keys)
