"""Finding zoos and loading donors with verified weights.

Weights are never unpickled: safetensors files are read as tensors, and other files go through
`torch.load(weights_only=True)`. Embedded weights are checked against the sha256 in the zoo's
manifest before use.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from dery_deploy.dissect import Dissection, dissect
from dery_deploy.errors import DeryError
from dery_deploy.zoo.spec import EMBEDDED_DIR, DonorSpec, ZooSpec, file_hash, load_zoo_file, manifest, weights_path


def embedded_zoos() -> list[str]:
    return sorted(p.parent.name for p in EMBEDDED_DIR.glob("*/zoo.yaml"))


def list_zoos(pattern: str = "*") -> list[str]:
    names = set(embedded_zoos()) | {p.stem for p in Path("zoos").glob("*.yaml")}
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def get_zoo(name_or_path: str | Path) -> ZooSpec:
    """An embedded zoo by name, `zoos/<name>.yaml` in the working directory, or a YAML path."""
    s = str(name_or_path)
    p = Path(s)
    if s.endswith((".yaml", ".yml")) or p.is_file():
        return load_zoo_file(p)
    local = Path("zoos") / f"{s}.yaml"
    if local.is_file():
        return load_zoo_file(local)
    emb = EMBEDDED_DIR / s / "zoo.yaml"
    if emb.is_file():
        return load_zoo_file(emb)
    raise DeryError(
        f"Unknown zoo {s!r}. Known zoos: {', '.join(list_zoos()) or 'none'}. Run `dery zoo list`, "
        "or pass a path to a zoo YAML.",
        "zoo",
    )


def create_model(donor: DonorSpec, in_chans: int, pretrained: bool = False) -> nn.Module:
    import timm

    if not timm.is_model(donor.arch) and not pretrained:
        import difflib

        close = difflib.get_close_matches(donor.arch, timm.list_models(), n=8, cutoff=0.75)
        raise DeryError(
            f"Unknown timm architecture {donor.arch!r} (donor {donor.name!r}). "
            f"Similar names: {', '.join(close) or 'none'}; see `timm.list_models()`.",
            "zoo",
        )
    kwargs = dict(donor.kwargs)
    kwargs.setdefault("in_chans", in_chans)
    kwargs.setdefault("num_classes", donor.num_classes)
    try:
        if pretrained:
            return timm.create_model(donor.weights_ref, pretrained=True, **kwargs)
        return timm.create_model(donor.arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise DeryError(
            f"timm cannot build {donor.arch!r} with kwargs {kwargs} (donor {donor.name!r}): {e}", "zoo"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without unpickling arbitrary objects."""
    if not path.is_file():
        raise DeryError(f"weights file missing: {path}", "zoo")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal is the user's file, not our bug
        raise DeryError(
            f"cannot read {path} as a weights-only checkpoint ({type(e).__name__}); "
            "save a state dict with safetensors or torch.save(model.state_dict())",
            "zoo",
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise DeryError(f"{path} does not hold a state dict", "zoo")
    return sd


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
                parts.append(f"{label}: {', '.join(keys[:6])}{more}")
        raise DeryError(
            f"state dict of {what} does not match the architecture: "
            + "; ".join(parts)
            + ". Check the donor's arch, kwargs and num_classes.",
            "zoo",
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def load_donor(zoo: ZooSpec, name: str) -> nn.Module:
    """Build a donor and load its weights, verified. Returns the model in eval mode on the CPU."""
    donor = zoo.donor(name)
    scheme = donor.weights_scheme
    if scheme == "timm":
        model = create_model(donor, zoo.input.channels, pretrained=True)
        return model.eval()
    # `none` weights are a seeded random init, so a zoo of bare architectures is still reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(hashlib.sha256(f"{zoo.name}/{name}".encode()).hexdigest()[:8], 16))
        model = create_model(donor, zoo.input.channels)
    if scheme == "embedded":
        entry = manifest(zoo).get("donors", {}).get(name)
        path = weights_path(zoo, donor)
        if entry is None:
            raise DeryError(
                f"donor {name!r} has no entry in {zoo.root}/manifest.json; rebuild the zoo with its builder script",
                "zoo",
            )
        if not path.is_file():
            raise DeryError(
                f"weights file missing for donor {name!r}: {path}; rebuild the zoo with "
                f"`{entry.get('command', 'its builder script')}`",
                "zoo",
            )
        digest = file_hash(str(path), path.stat().st_mtime_ns)
        if digest != entry["sha256"]:
            raise DeryError(
                f"weights of donor {name!r} ({path.name}) have sha256 {digest[:12]}..., the manifest "
                f"says {entry['sha256'][:12]}...; the file was changed or corrupted, restore it "
                "(git checkout) or rebuild the zoo",
                "zoo",
            )
        load_state_dict_strict(model, read_state_dict(path), f"donor {name!r}")
    elif scheme == "file":
        load_state_dict_strict(model, read_state_dict(weights_path(zoo, donor)), f"donor {name!r}")
    return model.eval()


def dissect_zoo(zoo: ZooSpec, donors: Collection[str] | None = None) -> dict[str, Dissection]:
    """Dissection of every donor, or of those of `donors` the zoo has (weights loaded; blocks built from it
    share the donor's modules). A training needs its plan's donors only (`Plan.donors`): a quick run built
    its networks 37 times, each time loading all six donors of the embedded zoo (5-7 s of the run)."""
    wanted = zoo.donors if donors is None else [d for d in zoo.donors if d.name in donors]
    return {d.name: dissect(load_donor(zoo, d.name), d.arch, zoo.input_tensor_spec) for d in wanted}
