"""`dery devices`: the device specs, and which one this machine is.

Examples:
    dery devices
    dery devices --json
"""

from __future__ import annotations

import typer

from dery_deploy.cli.common import Listing
from dery_deploy.runtime.devices import list_devices, this_machine


def devices(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List device specs and mark the ones this machine matches (NVML for GPUs, CPU model for CPUs)."""
    here = {s.id for s in this_machine()}
    listing = Listing(
        "device specs (devices/*.yaml)",
        "id",
        "here",
        "default",
        "backends",
        "MB",
        "name",
        ids=("id",),
        numbers=("MB",),
        optional=("name",),
    )
    for s in list_devices():
        listing.add(
            **{
                "id": s.id,
                "name": s.name,
                "backends": ", ".join(s.backends),
                "default": f"{s.default_backend} {s.default_precision}",
                "MB": s.memory_mb,
                "here": "yes" if s.id in here else "",
            }
        )
    listing.show(as_json)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
