"""Similarity between every pair of donors: mini-batch linear CKA at all boundary pairs, cached.

One pass of the probe set through the donors that have missing pairs: per mini-batch each donor's
boundary Gram matrices are stacked, and every missing pair accumulates all its HSIC terms from
them. Memory is bounded by the mini-batch (features are reduced to m x m Grams at once), not by
probe size x feature size.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dery_deploy.artifacts import atomic_write_json, atomic_write_with, cache_root, read_json_artifact, sha256_json
from dery_deploy.data.probe import probe_images
from dery_deploy.dissect import Dissection, dissect
from dery_deploy.errors import DeryError
from dery_deploy.similarity.cka import MinibatchCKA, gram
from dery_deploy.similarity.features import boundary_features
from dery_deploy.zoo.load import load_donor
from dery_deploy.zoo.spec import ZooSpec

SCHEMA = 1
METHOD = "linear-cka-minibatch-unbiased"
KIND = "similarity"
# A boundary is degenerate when its features hardly vary across images compared with their size.
# Both terms scale with the features' scale to the fourth power, so the test is scale-free.
DEGENERATE = 1e-10


def cuda_numerics(gpu: str, tf32_matmul: bool, tf32_cudnn: bool) -> str:
    """How a CUDA run computes: the GPU, and whether matmuls and convolutions may round to TF32."""
    return f"cuda {gpu} tf32 matmul={tf32_matmul} cudnn={tf32_cudnn}"


def numerics(device: str) -> str | None:
    """What besides zoo, probe and method decides the numbers: None on a CPU (the key CPU results always had,
    so their caches stay valid); on CUDA the GPU and its TF32 settings (cuDNN uses TF32 by default), whose
    results must not be served as CPU ones or the other way round."""
    if not device.startswith("cuda"):
        return None
    gpu = torch.cuda.get_device_name(torch.device(device))
    return cuda_numerics(gpu, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def similarity_key(zoo_hash: str, probe_hash: str, numerics: str | None = None) -> str:
    return sha256_json([zoo_hash, probe_hash, METHOD] + ([numerics] if numerics else []))[:16]


@dataclass
class SimilarityStats:
    pairs: int
    reused: int
    computed: int
    seconds: float
    probe_images: int


@dataclass
class Similarity:
    """CKA matrices per ordered donor pair; matrix(a, b)[i, j] = CKA(boundary i of a, boundary j of b)."""

    zoo: str
    zoo_hash: str
    probe_hash: str
    method: str
    matrices: dict[tuple[str, str], torch.Tensor]
    notes: list[str] = field(default_factory=list)
    numerics: str | None = None  # see `numerics()`; None: computed on a CPU

    def matrix(self, a: str, b: str) -> torch.Tensor:
        if (a, b) in self.matrices:
            return self.matrices[(a, b)]
        if (b, a) in self.matrices:
            return self.matrices[(b, a)].T
        raise KeyError(f"no similarity for {a} / {b}")

    @property
    def key(self) -> str:
        return similarity_key(self.zoo_hash, self.probe_hash, self.numerics)


def pair_path(root: Path, zoo: ZooSpec, key: str, a: str, b: str) -> Path:
    return root / zoo.name / "similarity" / key / f"{a}__{b}.json"


def _load_pair(path: Path, zoo_hash: str, probe_hash: str, numerics: str | None) -> torch.Tensor | None:
    """A cached pair if it is valid for these keys; None (recompute) otherwise."""
    if not path.is_file():
        return None
    try:
        data = read_json_artifact(path, KIND, SCHEMA, "similarity")
    except DeryError:
        return None
    want = (zoo_hash, probe_hash, METHOD, numerics)
    if (data.get("zoo_hash"), data.get("probe_hash"), data.get("method"), data.get("numerics")) != want:
        return None
    return torch.tensor(data["matrix"], dtype=torch.float64)


def load_similarity(zoo: ZooSpec, key: str, cache: Path | None = None) -> Similarity:
    """The cached similarity a partition was made from (by its key), without recomputing anything."""
    root = cache or cache_root()
    matrices, probe_hash, how = {}, None, None
    for a, b in itertools.combinations_with_replacement(zoo.donor_names, 2):
        path = pair_path(root, zoo, key, a, b)
        if not path.is_file():
            raise DeryError(
                f"the similarity {key} the partition was made from is not in {root}; rerun `dery similarity "
                f"--zoo {zoo.ref}` with the same probe data, or `dery partition` again",
                "similarity",
            )
        data = read_json_artifact(path, KIND, SCHEMA, "similarity")
        if data.get("zoo_hash") != zoo.hash():
            raise DeryError(
                f"{path} belongs to another version of zoo {zoo.name!r}; rerun `dery partition`", "similarity"
            )
        probe_hash, how = data["probe_hash"], data.get("numerics")
        matrices[(a, b)] = torch.tensor(data["matrix"], dtype=torch.float64)
    assert probe_hash is not None, "a zoo has at least one donor, so one pair was read"
    return Similarity(zoo.name, zoo.hash(), probe_hash, METHOD, matrices, numerics=how)


def compute_similarity(
    zoo: ZooSpec,
    probe: int = 512,
    seed: int = 0,
    device: str = "cpu",
    batch: int = 128,
    cache: Path | None = None,
    probe_data: str | None = None,
    progress=None,
) -> tuple[Similarity, SimilarityStats]:
    """CKA matrices for all donor pairs, reusing valid cached pairs.

    Args:
        probe_data: where the probe images come from: a `--data` spec (its unlabelled images) or a folder
            of images; None is the embedded default (Fashion-MNIST) for 1-channel zoos.
    """
    if probe < 8:
        raise DeryError(f"--probe must be at least 8 images, got {probe}", "similarity")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeryError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu", "similarity")
    root = cache or cache_root()
    images, probe_hash, notes = probe_images(probe_data, zoo.input, probe, seed)
    probe = len(images)
    if probe < 8:
        raise DeryError(f"the probe data holds only {probe} images; CKA needs at least 8", "similarity")
    zoo_hash = zoo.hash()
    how = numerics(device)
    key = similarity_key(zoo_hash, probe_hash, how)
    # Self pairs too: the partition compares a donor's blocks with set centres cut from the same donor.
    pairs = list(itertools.combinations_with_replacement(zoo.donor_names, 2))
    matrices = {}
    for a, b in pairs:
        if (cached := _load_pair(pair_path(root, zoo, key, a, b), zoo_hash, probe_hash, how)) is not None:
            matrices[(a, b)] = cached
    missing = [p for p in pairs if p not in matrices]
    t0 = time.time()
    if missing:
        donors = _load_donors(zoo, [n for n in zoo.donor_names if any(n in p for p in missing)], device)
        m_batch = min(batch, probe)
        acc = _accumulate_cka(donors, missing, images, m_batch, device, progress)
        # what the numbers were computed from, so that a later run reuses a pair only for the same keys
        provenance = {
            "schema": SCHEMA,
            "kind": KIND,
            "zoo": zoo.name,
            "zoo_hash": zoo_hash,
            "probe_hash": probe_hash,
            "probe_images": probe,
            "probe_seed": seed,
            "method": METHOD,
            "numerics": how,
            "minibatch": m_batch,
        }
        for (a, b), cka in acc.items():
            for name, (self_terms, scale) in zip((a, b), cka.self_terms()):
                _refuse_constant_features(name, donors[name][0], self_terms, scale)
            m = matrices[(a, b)] = cka.value().cpu()
            pair = {"donors": [a, b], "shape": list(m.shape), "matrix": m.tolist()}
            atomic_write_json(pair_path(root, zoo, key, a, b), {**provenance, **pair})
    stats = SimilarityStats(len(pairs), len(pairs) - len(missing), len(missing), round(time.time() - t0, 2), probe)
    return Similarity(zoo.name, zoo_hash, probe_hash, METHOD, matrices, notes, how), stats


def _load_donors(zoo: ZooSpec, names: list[str], device: str) -> dict[str, tuple[Dissection, nn.Module]]:
    """Each named donor dissected, its model moved to `device` (its units share the model's modules)."""
    donors = {}
    for n in names:
        model = load_donor(zoo, n)
        d = dissect(model, zoo.donor(n).arch, zoo.input_tensor_spec)  # on the CPU, where its probe input is made
        donors[n] = (d, model.to(device))  # the units share the model's modules, so they move with it
    return donors


def _accumulate_cka(
    donors: dict[str, tuple[Dissection, nn.Module]],
    pairs: list[tuple[str, str]],
    images: torch.Tensor,
    m_batch: int,
    device: str,
    progress,
) -> dict[tuple[str, str], MinibatchCKA]:
    """One pass of the probe images through the donors: every pair's HSIC terms from each mini-batch's Grams."""
    acc = {p: MinibatchCKA() for p in pairs}
    n_batches = len(images) // m_batch  # equal-sized mini-batches keep the estimator's weights equal
    task = progress.add_task("similarity", total=n_batches * len(donors)) if progress else None
    for bi in range(n_batches):
        x = images[bi * m_batch : (bi + 1) * m_batch].to(device)
        grams = {}
        for n, (d, _model) in donors.items():
            grams[n] = torch.stack([gram(f) for f in boundary_features(d, x, n)])
            if progress:
                progress.update(task, advance=1, description=f"similarity: {n} batch {bi + 1}/{n_batches}")
        for a, b in pairs:
            acc[(a, b)].update(grams[a], grams[b])
    return acc


def _refuse_constant_features(name: str, d: Dissection, self_terms: torch.Tensor, scale: torch.Tensor) -> None:
    """Raise where a donor's boundaries do not vary across images: CKA is undefined there."""
    dead = (self_terms <= DEGENERATE * scale).nonzero().flatten().tolist()
    if dead:
        where = ", ".join(f"{i} ({'input' if i == 0 else d.units[i - 1].name})" for i in dead)
        raise DeryError(
            f"donor {name!r} produces constant features at boundary {where} (they do not vary "
            "across images); CKA is undefined there: check its weights or remove it from the zoo",
            "similarity",
        )


def heatmap_png(sim: Similarity, zoo: ZooSpec, a: str, b: str, path: Path) -> Path:
    """Write the CKA matrix of donors a and b as a labelled heat-map PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = sim.matrix(a, b).numpy()
    da = dissect(load_donor(zoo, a), zoo.donor(a).arch, zoo.input_tensor_spec)
    db = dissect(load_donor(zoo, b), zoo.donor(b).arch, zoo.input_tensor_spec)
    la = ["input"] + [u.name for u in da.body]
    lb = ["input"] + [u.name for u in db.body]
    fig, ax = plt.subplots(figsize=(1.6 + 0.32 * len(lb), 1.4 + 0.3 * len(la)), dpi=120)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lb)), lb, rotation=70, fontsize=7)
    ax.set_yticks(range(len(la)), la, fontsize=7)
    ax.set_xlabel(f"{b} ({zoo.donor(b).arch}): output of unit")
    ax.set_ylabel(f"{a} ({zoo.donor(a).arch}): output of unit")
    ax.set_title(f"Linear CKA, zoo {zoo.name}", fontsize=10)
    fig.colorbar(im, ax=ax, label="CKA")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
