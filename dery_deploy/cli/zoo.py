"""`dery zoo list | show | dissect`: what zoos exist, what is in one, how a model is cut.

Examples:
    dery zoo list
    dery zoo show fashion --latency
    dery zoo dissect resnet50
    dery zoo dissect vit_tops --zoo fashion --json
"""

from __future__ import annotations

import json

import torch
import typer

from dery_deploy.cli.common import Listing, console
from dery_deploy.dissect import TensorSpec, dissect, equivalence_error, list_families
from dery_deploy.errors import DeryError
from dery_deploy.runtime.devices import get_device, this_machine
from dery_deploy.runtime.harness import Measurement
from dery_deploy.runtime.measure import measure_module
from dery_deploy.zoo.load import create_model, get_zoo, list_zoos, load_donor
from dery_deploy.zoo.spec import DonorSpec
from dery_deploy.zoo.summary import zoo_rows

app = typer.Typer(no_args_is_help=True, help="Zoos: list them, show one, dissect a model into units.")


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the known zoos (embedded ones and zoos/*.yaml here). Example: `dery zoo list`."""
    listing = Listing("zoos", "zoo", "donors", "input", "description", ids=("zoo",), numbers=("donors",))
    for name in list_zoos():
        z = get_zoo(name)
        listing.add(
            zoo=name,
            donors=len(z.donors),
            input=f"{z.input.channels}x{z.input.size}x{z.input.size}",
            description=" ".join(z.description.split()),
        )
    listing.show(as_json)


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="zoo name or path to a zoo YAML"),
    latency: bool = typer.Option(
        False,
        "--latency",
        help="also measure batch-1 latency on this machine, with its device's default backend (what the planner uses)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """A table of the donors of one zoo. Example: `dery zoo show fashion --latency`."""
    zoo = get_zoo(name)
    rows = zoo_rows(zoo)
    lat_col, measured_with = None, ""
    timed: dict[str, Measurement] = {}  # donor -> its batch-1 latency here
    if latency:
        from dery_deploy.profile.run import device_for, resolve_backend

        spec = (this_machine() or [get_device("cpu")])[0]
        backend, precision = resolve_backend(spec, None, None)
        lat_col = f"{backend.name} {precision} b1 (ms)"
        measured_with = f"{backend.name} {precision}, batch 1, {spec.id}"
        x = torch.randn(1, *zoo.input_tensor_spec.shape, generator=torch.Generator().manual_seed(0))
        for r in rows:
            m = load_donor(zoo, r.donor)
            timed[r.donor] = measure_module(backend, m, x, precision, device_for(spec)).timing
    cols = ["donor", "arch", "M params", "units", "src acc %"] + ([lat_col] if lat_col else []) + ["family", "source"]
    listing = Listing(
        f"zoo {zoo.name} ({zoo.hash()})",
        *cols,
        ids=("donor", "arch"),
        numbers=("M params", "units", "src acc %") + ((lat_col,) if lat_col else ()),
        optional=("family", "source"),
    )
    for r in rows:
        t = timed.get(r.donor)
        lat = None if t is None else f"{round(t.median_ms, 4):.3f}" + ("" if t.stable else " (unstable)")
        listing.add(
            **{
                "donor": r.donor,
                "arch": r.arch,
                "family": r.family,
                "M params": f"{r.params_m:.2f}",
                "units": r.units,
                "source": r.source,
                "src acc %": None if r.source_accuracy is None else f"{r.source_accuracy:.2f}",
                **({lat_col: lat} if lat_col else {}),
            }
        )
    if as_json:
        donors = [
            {**r.to_dict(), **({} if t is None else _latency_json(t, measured_with))}
            for r, t in ((r, timed.get(r.donor)) for r in rows)
        ]
        print(json.dumps({"zoo": zoo.name, "hash": zoo.hash(), "donors": donors}, indent=2))
        return
    listing.show()


def _latency_json(t: Measurement, measured_with: str) -> dict[str, object]:
    """A donor's measured latency as `dery zoo show --latency --json` adds it to the donor's row."""
    return {"latency_ms": round(t.median_ms, 4), "latency_stable": t.stable, "latency_backend": measured_with}


@app.command("dissect")
def dissect_cmd(
    arch: str = typer.Argument(..., help="timm architecture, or a donor name with --zoo"),
    zoo: str = typer.Option(None, "--zoo", help="take ARCH as a donor of this zoo (with its weights)"),
    size: int = typer.Option(224, "--size", help="input size for a bare timm architecture"),
    in_chans: int = typer.Option(3, "--in-chans", help="input channels for a bare timm architecture"),
    kwargs: str = typer.Option("{}", "--kwargs", help="JSON timm.create_model kwargs for a bare architecture"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    tol: float = typer.Option(1e-5, "--tol", help="max allowed |model(x) - units(x)| in fp32"),
) -> None:
    """Cut a model into units, print the tensor spec at every boundary, and check that running
    the units in order reproduces model(x). Example: `dery zoo dissect convnext_tiny`."""
    if zoo:
        z = get_zoo(zoo)
        donor = z.donor(arch)
        model, name, spec = load_donor(z, arch), donor.arch, z.input_tensor_spec
    else:
        try:
            kw = json.loads(kwargs)
            assert isinstance(kw, dict)
        except (json.JSONDecodeError, AssertionError):
            raise DeryError(f"--kwargs must be a JSON object, got {kwargs!r}", "dissect") from None
        if size <= 0 or in_chans <= 0:
            raise DeryError(f"--size and --in-chans must be positive, got {size} and {in_chans}", "dissect")
        model = create_model(DonorSpec(arch, arch, "none", "", kw.pop("num_classes", 1000), kw), in_chans)
        name, spec = arch, TensorSpec("NCHW", in_chans, size, size, 0, 1.0)
    model.eval()
    d = dissect(model, name, spec)
    torch.manual_seed(0)
    err = equivalence_error(model, d, torch.randn(2, *spec.shape))
    ok = err <= tol
    if as_json:
        print(json.dumps({**d.to_dict(), "equivalence_max_abs_diff": err, "tolerance": tol, "ok": ok}, indent=2))
    else:
        listing = Listing(
            f"{name}: family {d.family}, {len(d.units)} units",
            "#",
            "unit",
            "kind",
            "in",
            "out",
            "params",
            ids=("unit",),
            numbers=("#", "params"),
        )
        for u in d.units:
            listing.add(
                **{
                    "#": u.index,
                    "unit": u.name,
                    "kind": u.kind,
                    "in": u.in_spec.short(),
                    "out": u.out_spec.short(),
                    "params": f"{sum(p.numel() for p in u.module.parameters()):,}",
                }
            )
        listing.show()
        verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
        console.print(f"equivalence: max |model(x) - units(x)| = {err:.3e} (tolerance {tol:g}) {verdict}")
        console.print(f"supported families: {', '.join(list_families())}", style="dim")
    if not ok:
        raise typer.Exit(1)
