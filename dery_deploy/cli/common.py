"""Shared CLI helpers: the console, listings (a table at any width, or --json), progress bars, and
option parsing. Printing only: no library code lives in cli/."""

from __future__ import annotations

import json
import math
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from dery_deploy.errors import DeryError
from dery_deploy.runtime.harness import PERCENTILES

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class Listing:
    """Rows for a table or for --json. Identifier columns (`ids`) are never cut or wrapped, at any
    width: the other columns wrap instead, so a user can always copy what they must type."""

    def __init__(
        self,
        title: str | None = None,
        *columns: str,
        ids: tuple[str, ...] = (),
        numbers: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ):
        self.title, self.columns, self.ids, self.numbers = title, list(columns), set(ids), set(numbers)
        self.optional = list(optional)  # dropped, last first, where the terminal is too narrow for them
        self.rows: list[dict[str, Any]] = []

    def add(self, **values: Any) -> None:
        self.rows.append(values)

    def show(self, as_json: bool = False, extra: dict | None = None) -> None:
        if as_json:
            print(json.dumps({**(extra or {}), "rows": self.rows} if extra else self.rows, indent=2, default=str))
            return
        cells = {c: [_cell(r.get(c, "")) for r in self.rows] for c in self.columns}
        natural = {c: max([len(c)] + [len(v) for v in cells[c]]) for c in self.columns}
        # text columns wrap between words, never inside one: their floor is their longest word
        floor_ = {
            c: natural[c]
            if (c in self.ids or c in self.numbers)
            else max([len(w) for v in cells[c] + [c] for w in v.split()] or [1])
            for c in self.columns
        }
        hidden: list[str]
        columns, hidden = list(self.columns), []
        while sum(floor_[c] for c in columns) + 3 * len(columns) - 1 > console.width and any(
            c in columns for c in self.optional
        ):
            drop = next(c for c in reversed(self.optional) if c in columns)
            columns.remove(drop)
            hidden.insert(0, drop)
        fixed = [c for c in columns if c in self.ids or c in self.numbers]
        text = [c for c in columns if c not in fixed]
        room = console.width - (3 * len(columns) - 1) - sum(natural[c] for c in fixed)  # less padding and rules
        widths = dict(natural)
        if text and sum(natural[c] for c in text) > room:
            spare = max(0, room - sum(floor_[c] for c in text))
            excess = {c: natural[c] - floor_[c] for c in text}
            total = sum(excess.values()) or 1
            for c in text:
                widths[c] = floor_[c] + int(spare * excess[c] / total)
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for c in columns:
            if c in self.numbers:
                table.add_column(c, justify="right", no_wrap=True, width=widths[c])
            else:
                table.add_column(c, no_wrap=c in self.ids, width=widths[c], overflow="fold")
        for r in self.rows:
            table.add_row(*[_cell(r.get(c, "")) for c in columns])
        console.print(table)
        if hidden:
            console.print(
                f"({', '.join(hidden)} hidden at {console.width} columns: widen the terminal or use --json)",
                style="dim",
            )


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def progress_bar() -> Progress:
    """A progress bar that fits 80 columns: the description gives way, the counts and ETA do not."""
    return Progress(
        TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(compact=True),
        console=console,
        transient=True,
    )


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeryError(f"{what} must be comma-separated integers, got {text!r} (e.g. 1,32)") from None
    if not values or any(v <= 0 for v in values):
        raise DeryError(f"{what} must be positive integers, got {text!r} (e.g. 1,32)")
    return values


def parse_float_list(text: str, what: str) -> list[float]:
    parts = [v.strip() for v in text.split(",")]
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise DeryError(f"{what} must be comma-separated numbers, got {text!r} (e.g. 1.5 or 1,2,4)") from None
    if not values or any(not (0 < v < math.inf) for v in values):
        raise DeryError(f"{what} must be positive finite numbers, got {text!r} (e.g. 1.5 or 1,2,4)")
    return values


def check_percentile(percentile: int, stage: str) -> None:
    if percentile not in PERCENTILES:
        raise DeryError(
            f"--percentile must be one of {', '.join(map(str, PERCENTILES))} (of single calls), got {percentile}", stage
        )


def show_notes(notes: list[str]) -> None:
    for n in notes:
        err_console.print(f"[yellow]note:[/] {n}")
