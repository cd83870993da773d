"""`dery devices`: the device specs, and which one this machine is.

Example:
    dery devices
"""

from __future__ import annotations

import typer
from rich.table import Table

from dery_deploy.cli.common import console


def devices() -> None:
    """List device specs and mark the ones this machine matches (NVML for GPUs, CPU model for CPUs)."""
    from dery_deploy.profile.devices import list_devices, this_machine

    here = {s.id for s in this_machine()}
    table = Table("id", "name", "kind", "backends", "default", "memory (MB)", "this machine")
    for s in list_devices():
        table.add_row(s.id, s.name, s.kind, ", ".join(s.backends), f"{s.default_backend} {s.default_precision}",
                      str(s.memory_mb or "-"), "[green]yes[/]" if s.id in here else "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
