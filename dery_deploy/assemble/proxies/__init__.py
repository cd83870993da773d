"""Training-free proxies, one module each, in a small registry filled by a decorator."""

from __future__ import annotations

from collections.abc import Callable

from dery_deploy.errors import DeryError

_PROXIES: dict[str, Callable] = {}


def register_proxy(name: str):
    def deco(fn):
        _PROXIES[name] = fn
        return fn

    return deco


def get_proxy(name: str) -> Callable:
    _load()
    if name not in _PROXIES:
        raise DeryError(f"Unknown proxy {name!r}. Proxies: {', '.join(sorted(_PROXIES))}.", "assemble")
    return _PROXIES[name]


def list_proxies() -> list[str]:
    _load()
    return sorted(_PROXIES)


def _load() -> None:
    from dery_deploy.assemble.proxies import naswot, probe, zico  # noqa: F401
