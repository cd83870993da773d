"""What a fine-tune trains (`FinetuneSource`): a plan with its fitted adapters and head, or a donor
trained whole with a new head. config.json's `source`, checkpoints' metadata and selection's study
names hold it as the JSON object `to_dict` writes, so that object never changes: the same keys, in the
same order, as the bare dict it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from dery_deploy.artifacts import JsonValue, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan

# the keys each kind of source may have, in the order they are written
PLAN_KEYS = ("plan", "adapter_weights", "start_weights", "frozen_blocks")
DONOR_KEYS = ("donor", "zoo_ref")


@dataclass(frozen=True)
class FinetuneSource:
    """A plan (`plan`, its adapters and head fitted during assembly in `adapter_weights`, a whole start
    state in `start_weights`: selection's seam-matched start, shared by its folds, or a family path's start
    with the blocks it shares with its largest path, held frozen as `frozen_blocks` lists them) or a donor
    (`donor`, on the zoo `zoo_ref`). Exactly one of `plan` and `donor` is set."""

    plan: Plan | None = None
    adapter_weights: str | None = None  # absolute path of a .safetensors; None where the plan has none
    start_weights: str | None = None
    donor: str | None = None
    zoo_ref: str | None = None
    frozen_blocks: tuple[int, ...] = ()  # blocks trained by nobody here (a family path's shared blocks)

    def __post_init__(self) -> None:
        if (self.plan is None) == (self.donor is None):
            raise DeryError("a fine-tune source is a plan or a donor, exactly one of the two", "finetune")
        if self.donor is not None and (self.adapter_weights or self.start_weights or self.frozen_blocks):
            raise DeryError(
                f"donor {self.donor!r} is trained whole: it takes no adapter or start weights and no frozen blocks",
                "finetune",
            )

    @classmethod
    def of_plan(cls, plan: Plan, adapter_weights: str | None = None) -> FinetuneSource:
        """A plan, with the adapter weights assembly fitted for it (an absolute path) where there are.

        The plan is kept as config.json will read it back (built again from its dict): a source made here
        equals the one a run folder holds for it, and a later change to the caller's plan (its selection,
        once picked) is not what the run says it trained."""
        return cls(plan=Plan.from_dict(plan.to_dict()), adapter_weights=adapter_weights)

    @classmethod
    def of_donor(cls, name: str, zoo_ref: str | None = None) -> FinetuneSource:
        """A donor trained whole with a new head, from the zoo `zoo_ref` (None: not written; only a
        network built for timing goes without it)."""
        return cls(donor=name, zoo_ref=zoo_ref)

    @property
    def is_donor(self) -> bool:
        """A donor trained whole (no plan). Not a finalist's `is_donor`: a whole-donor plan is a plan here."""
        return self.donor is not None

    def starting_from(self, start_weights: str) -> FinetuneSource:
        """This plan, trained from a whole start state rather than its fitted adapters alone."""
        return FinetuneSource(self.plan, self.adapter_weights, start_weights, frozen_blocks=self.frozen_blocks)

    def freezing(self, blocks: list[int]) -> FinetuneSource:
        """This plan with `blocks` (indices into its chain) held frozen: out of every optimizer, BatchNorm in eval."""
        return FinetuneSource(self.plan, self.adapter_weights, self.start_weights, frozen_blocks=tuple(blocks))

    def trains(self) -> list[JsonValue]:
        """What training this source depends on, by content: a donor's name and zoo, or a plan's trained
        fields (not the target it is measured on) with the digests of its weight files (not their paths: each
        budget's assembly writes its own copy) and its frozen blocks. Equal for the same network trained from
        the same weights, so a finished training may be read back (selection's trials, a budget's heal). Not the
        plan's adapter and head records: `build_net` derives them from the blocks and writes them only into a
        plan it built (the same network's plan for a further target is saved without them; their weights'
        digest holds their shapes and values)."""
        if self.plan is None:
            return [{"donor": self.donor, "zoo_ref": self.zoo_ref}]
        plan = self.plan.to_dict()
        fields = {k: plan.get(k) for k in ("zoo_hash", "num_classes", "blocks", "head_kind")}
        weights: list[JsonValue] = [sha256_file(w) if w else None for w in (self.adapter_weights, self.start_weights)]
        return [fields, weights, list(self.frozen_blocks)]

    def to_dict(self) -> dict[str, JsonValue]:
        """The JSON object written as the run's `source`: {"plan", "adapter_weights"[, "start_weights"]}
        or {"donor"[, "zoo_ref"]}, as the bare dicts before this record."""
        if self.plan is not None:
            d: dict[str, JsonValue] = {"plan": self.plan.to_dict(), "adapter_weights": self.adapter_weights}
            if self.start_weights is not None:
                d["start_weights"] = self.start_weights
            if self.frozen_blocks:
                d["frozen_blocks"] = list(self.frozen_blocks)
            return d
        d = {"donor": self.donor}
        if self.zoo_ref is not None:
            d["zoo_ref"] = self.zoo_ref
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneSource:
        """A `source` as config.json has held it (a plan's written before selection's folds may lack
        `adapter_weights`); a DeryError naming the key where it is neither."""
        if not isinstance(d, dict):
            raise DeryError(f"a fine-tune source is a JSON object, not {type(d).__name__}", "finetune")
        kind, keys = ("plan", PLAN_KEYS) if "plan" in d else ("donor", DONOR_KEYS)
        bad = [k for k in d if k not in keys]
        if kind not in d or bad:
            what = f"key(s) {', '.join(map(repr, bad))}" if bad else "no 'plan' or 'donor' key"
            raise DeryError(
                f"fine-tune source has {what}: a plan's has {', '.join(PLAN_KEYS)}, a donor's {', '.join(DONOR_KEYS)}",
                "finetune",
            )
        if kind == "donor":
            return cls(donor=d["donor"], zoo_ref=d.get("zoo_ref"))
        try:
            plan = Plan.from_dict(d["plan"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DeryError(f"fine-tune source's 'plan' is not a plan ({type(e).__name__}: {e})", "finetune") from None
        return cls(
            plan, d.get("adapter_weights"), d.get("start_weights"), frozen_blocks=tuple(d.get("frozen_blocks", ()))
        )
