"""Similarity between every pair of donors: mini-batch linear CKA at all boundary pairs, cached.

One pass of the probe set through the donors that have missing pairs: per mini-batch each donor's
boundary Gram matrices are stacked, and every missing pair accumulates all its HSIC terms from
them. Memory is bounded by the mini-batch (features are reduced to m x m Grams at once), not by
probe size x feature size.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_json, read_json_artifact, sha256_json
from dery_deploy.dissect import dissect
from dery_deploy.errors import DeryError
from dery_deploy.similarity.cka import MinibatchCKA, gram
from dery_deploy.similarity.features import boundary_features
from dery_deploy.zoo.load import load_donor
from dery_deploy.zoo.spec import ZooSpec

SCHEMA = 1
METHOD = "linear-cka-minibatch-unbiased"
KIND = "similarity"


def cache_root() -> Path:
    return Path(os.environ.get("DERY_CACHE", ".dery_cache"))


@dataclass
class Similarity:
    """CKA matrices per ordered donor pair; matrix(a, b)[i, j] = CKA(boundary i of a, boundary j of b)."""

    zoo: str
    zoo_hash: str
    probe_hash: str
    method: str
    matrices: dict[tuple[str, str], torch.Tensor]

    def matrix(self, a: str, b: str) -> torch.Tensor:
        if (a, b) in self.matrices:
            return self.matrices[(a, b)]
        if (b, a) in self.matrices:
            return self.matrices[(b, a)].T
        raise KeyError(f"no similarity for {a} / {b}")

    @property
    def key(self) -> str:
        return sha256_json([self.zoo_hash, self.probe_hash, self.method])[:16]


def probe_images(zoo: ZooSpec, n: int, seed: int, data: str | None = None) -> tuple[torch.Tensor, str]:
    """Preprocessed probe images for a zoo and their content hash."""
    from dery_deploy.data.fashion_mnist import preprocess, probe_set

    if zoo.input.channels != 1 and data is None:
        raise DeryError(f"zoo {zoo.name!r} takes {zoo.input.channels}-channel {zoo.input.size} px images; "
                        "the built-in probe set is Fashion-MNIST (1 channel): pass --probe-data FOLDER", "similarity")
    if data is not None:
        from dery_deploy.data.folder import probe_from_folder

        return probe_from_folder(data, zoo, n, seed)
    images, h = probe_set(n, seed)
    return preprocess(images, zoo.input.size, zoo.input.mean[0], zoo.input.std[0]), h


def pair_path(root: Path, zoo: ZooSpec, key: str, a: str, b: str) -> Path:
    return root / zoo.name / "similarity" / key / f"{a}__{b}.json"


def _load_pair(path: Path, zoo_hash: str, probe_hash: str) -> torch.Tensor | None:
    """A cached pair if it is valid for these keys; None (recompute) otherwise."""
    if not path.is_file():
        return None
    try:
        data = read_json_artifact(path, KIND, SCHEMA, "similarity")
    except DeryError:
        return None
    if (data.get("zoo_hash"), data.get("probe_hash"), data.get("method")) != (zoo_hash, probe_hash, METHOD):
        return None
    return torch.tensor(data["matrix"], dtype=torch.float64)


def compute_similarity(zoo: ZooSpec, probe: int = 512, seed: int = 0, device: str = "cpu", batch: int = 128,
                       cache: Path | None = None, probe_data: str | None = None, progress=None) -> tuple[Similarity, dict]:
    """CKA matrices for all donor pairs, reusing valid cached pairs. Returns (similarity, stats)."""
    if probe < 4 * 2:
        raise DeryError(f"--probe must be at least 8 images, got {probe}", "similarity")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeryError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu", "similarity")
    root = cache or cache_root()
    images, probe_hash = probe_images(zoo, probe, seed, probe_data)
    zoo_hash = zoo.hash()
    key = sha256_json([zoo_hash, probe_hash, METHOD])[:16]
    names = zoo.donor_names
    # Self pairs too: the partition compares a donor's blocks with set centres cut from the same donor.
    pairs = list(itertools.combinations_with_replacement(names, 2))
    matrices, missing = {}, []
    for a, b in pairs:
        m = _load_pair(pair_path(root, zoo, key, a, b), zoo_hash, probe_hash)
        if m is None:
            missing.append((a, b))
        else:
            matrices[(a, b)] = m
    stats = {"pairs": len(pairs), "reused": len(pairs) - len(missing), "computed": len(missing), "seconds": 0.0}
    t0 = time.time()
    if missing:
        need = [n for n in names if any(n in p for p in missing)]
        donors = {}
        for n in need:
            model = load_donor(zoo, n).to(device)
            donors[n] = (dissect(model, zoo.donor(n).arch, zoo.input.tensor_spec()), model)
        acc = {p: MinibatchCKA() for p in missing}
        m_batch = min(batch, probe)
        n_batches = probe // m_batch  # equal-sized mini-batches keep the estimator's weights equal
        task = progress.add_task("similarity", total=n_batches * len(need)) if progress else None
        for bi in range(n_batches):
            x = images[bi * m_batch:(bi + 1) * m_batch].to(device)
            grams = {}
            for n, (d, model) in donors.items():
                grams[n] = torch.stack([gram(f) for f in boundary_features(d, x, n)])
                if progress:
                    progress.update(task, advance=1, description=f"similarity: {n} batch {bi + 1}/{n_batches}")
            for a, b in missing:
                acc[(a, b)].update(grams[a], grams[b])
        for (a, b), cka in acc.items():
            for name, self_terms in ((a, cka.xx), (b, cka.yy)):
                dead = (self_terms <= 1e-12 * self_terms.abs().max().clamp_min(1e-30)).nonzero().flatten().tolist()
                if dead:
                    d = donors[name][0]
                    where = ", ".join(f"{i} ({'input' if i == 0 else d.units[i - 1].name})" for i in dead)
                    raise DeryError(f"donor {name!r} produces constant features at boundary {where}; CKA is "
                                    "undefined there: check its weights or remove it from the zoo", "similarity")
            m = cka.value().cpu()
            matrices[(a, b)] = m
            atomic_write_json(pair_path(root, zoo, key, a, b), {
                "schema": SCHEMA, "kind": KIND, "zoo": zoo.name, "zoo_hash": zoo_hash, "probe_hash": probe_hash,
                "probe_images": probe, "probe_seed": seed, "method": METHOD, "minibatch": m_batch,
                "donors": [a, b], "shape": list(m.shape), "matrix": m.tolist()})
    stats["seconds"] = round(time.time() - t0, 2)
    return Similarity(zoo.name, zoo_hash, probe_hash, METHOD, matrices), stats


def heatmap_png(sim: Similarity, zoo: ZooSpec, a: str, b: str, path: Path) -> Path:
    """Write the CKA matrix of donors a and b as a labelled heat-map PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dery_deploy.artifacts import atomic_write_with

    m = sim.matrix(a, b).numpy()
    da = dissect(load_donor(zoo, a), zoo.donor(a).arch, zoo.input.tensor_spec())
    db = dissect(load_donor(zoo, b), zoo.donor(b).arch, zoo.input.tensor_spec())
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
