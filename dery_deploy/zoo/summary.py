"""One row per donor: family, params, units, source, source accuracy (latency comes from a profile
or a measurement with a named backend, never from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dery_deploy.dissect import dissect
from dery_deploy.schema import load_dataclass
from dery_deploy.zoo.load import load_donor
from dery_deploy.zoo.spec import ZooSpec, manifest


@dataclass(frozen=True)
class DonorRow:
    """One donor as the run's zoo.json, its report and `dery zoo show` list it."""

    donor: str
    arch: str
    family: str
    params_m: float  # millions of parameters
    units: int
    source: str  # where the weights came from
    source_accuracy: float | None  # the donor's test accuracy on its source task (%), where the zoo records it

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DonorRow:
        return load_dataclass(cls, d)


def zoo_rows(zoo: ZooSpec) -> list[DonorRow]:
    man = manifest(zoo).get("donors", {})
    rows = []
    for d in zoo.donors:
        model = load_donor(zoo, d.name)
        dis = dissect(model, d.arch, zoo.input_tensor_spec)
        entry = man.get(d.name, {})
        rows.append(
            DonorRow(
                d.name,
                d.arch,
                dis.family,
                sum(p.numel() for p in model.parameters()) / 1e6,
                len(dis.units),
                d.source,
                entry.get("source_test_accuracy"),
            )
        )
    return rows
