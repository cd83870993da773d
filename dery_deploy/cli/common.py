"""Shared CLI helpers: the console, tables, and common option parsing."""

from __future__ import annotations

from rich.console import Console

from dery_deploy.errors import DeryError

console = Console(highlight=False)


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeryError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise DeryError(f"{what} must be positive integers, got {text!r} (e.g. 1,32)")
    return values


def parse_float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeryError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise DeryError(f"{what} must be positive, got {text!r} (e.g. 1.5 or 1,2,4)")
    return values
