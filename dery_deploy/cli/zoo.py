"""`dery zoo list | show | dissect`: what zoos exist, what is in one, how a model is cut.

Examples:
    dery zoo list
    dery zoo show fashion --latency
    dery zoo dissect resnet50
    dery zoo dissect vit_tops --zoo fashion --json
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from dery_deploy.cli.common import console
from dery_deploy.errors import DeryError

app = typer.Typer(no_args_is_help=True, help="Zoos: list them, show one, dissect a model into units.")


@app.command("list")
def list_cmd() -> None:
    """List the known zoos (embedded ones and zoos/*.yaml here). Example: `dery zoo list`."""
    from dery_deploy.zoo.load import get_zoo, list_zoos

    table = Table("zoo", "donors", "input", "description")
    for name in list_zoos():
        z = get_zoo(name)
        table.add_row(name, str(len(z.donors)), f"{z.input.channels}x{z.input.size}x{z.input.size}",
                      " ".join(z.description.split())[:90])
    console.print(table)


@app.command("show")
def show_cmd(name: str = typer.Argument(..., help="zoo name or path to a zoo YAML"),
             latency: bool = typer.Option(False, "--latency", help="also measure batch-1 CPU latency (eager)"),
             as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """A table of the donors of one zoo. Example: `dery zoo show fashion --latency`."""
    from dery_deploy.zoo.load import get_zoo
    from dery_deploy.zoo.summary import zoo_rows

    zoo = get_zoo(name)
    rows = zoo_rows(zoo, latency=latency)
    if as_json:
        print(json.dumps({"zoo": zoo.name, "hash": zoo.hash(), "donors": rows}, indent=2))
        return
    table = Table("donor", "arch", "family", "params (M)", "units", "source", "source acc (%)",
                  *(["CPU b1 (ms)"] if latency else []), title=f"zoo {zoo.name} ({zoo.hash()})")
    for r in rows:
        acc = "-" if r["source_accuracy"] is None else f"{r['source_accuracy']:.2f}"
        extra = [f"{r['cpu_latency_ms_b1']:.2f}"] if latency else []
        table.add_row(r["donor"], r["arch"], r["family"], f"{r['params_m']:.2f}", str(r["units"]), r["source"], acc, *extra)
    console.print(table)


@app.command("dissect")
def dissect_cmd(arch: str = typer.Argument(..., help="timm architecture, or a donor name with --zoo"),
                zoo: str = typer.Option(None, "--zoo", help="take ARCH as a donor of this zoo (with its weights)"),
                size: int = typer.Option(224, "--size", help="input size for a bare timm architecture"),
                in_chans: int = typer.Option(3, "--in-chans", help="input channels for a bare timm architecture"),
                kwargs: str = typer.Option("{}", "--kwargs", help="JSON timm.create_model kwargs for a bare architecture"),
                as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
                tol: float = typer.Option(1e-5, "--tol", help="max allowed |model(x) - units(x)| in fp32")) -> None:
    """Cut a model into units, print the tensor spec at every boundary, and check that running
    the units in order reproduces model(x). Example: `dery zoo dissect convnext_tiny`."""
    import torch

    from dery_deploy.dissect import TensorSpec, dissect, equivalence_error, list_families
    from dery_deploy.zoo.load import create_model, get_zoo, load_donor
    from dery_deploy.zoo.spec import DonorSpec

    if zoo:
        z = get_zoo(zoo)
        donor = z.donor(arch)
        model, name, spec = load_donor(z, arch), donor.arch, z.input.tensor_spec()
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
        table = Table("#", "unit", "kind", "in", "out", "params", title=f"{name}: family {d.family}, {len(d.units)} units")
        for u in d.units:
            table.add_row(str(u.index), u.name, u.kind, u.in_spec.short(), u.out_spec.short(),
                          f"{sum(p.numel() for p in u.module.parameters()):,}")
        console.print(table)
        verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
        console.print(f"equivalence: max |model(x) - units(x)| = {err:.3e} (tolerance {tol:g}) {verdict}")
        console.print(f"supported families: {', '.join(list_families())}", style="dim")
    if not ok:
        raise typer.Exit(1)
