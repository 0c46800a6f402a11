"""The index kinds: which one ``auto`` picks, their knobs and defaults, and the faiss objects.

Why ``auto`` is Flat below 50k vectors and IVF-Flat above (not HNSW):

- Below ~50k vectors exact search costs well under a millisecond per query in a batch; nothing to
  win, and nothing to tune or train.
- IVF-Flat with ``nlist = 4 sqrt(N)`` (4000 cells at 1M) visits ``nprobe / nlist`` of the data plus
  the ``nlist`` centroids: at nprobe 16-32 that is ~10k of 1M vectors, 30-100x fewer inner products
  than Flat, and recall is re-traded after build by ``nprobe`` alone (calibrated at build time to
  the smallest nprobe reaching the recall target). The build is 10 k-means iterations on a seeded
  64-per-cell sample plus one assignment pass, all matrix products: BLAS-bound, scales with cores,
  reproducible. No memory on top of the float32 vectors.
- HNSW can answer single queries faster at the 1M scale, but it is built by inserting vectors one
  at a time into a graph (graph walks, not BLAS; faiss's multi-threaded insertion is not
  reproducible run to run; 6.8 s for 20k x 512-d on one busy core here, so minutes at 1M), adds
  8*M = 256 bytes per vector, and its recall at a fixed efSearch varies with the data's intrinsic
  dimension. It stays available as ``kind="hnsw"`` for latency-critical single queries.
- IVF-PQ is lossy (recall is capped by the code size), so it is never chosen silently.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

__all__ = ["FLAT_MAX", "KINDS", "KNOBS", "SEARCH_KNOB", "choose", "make_index", "resolve_knobs"]

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_MAX = 50_000  # auto uses exact search below this many vectors
MIN_POINTS_PER_CELL = 39  # below this faiss k-means warns that centroids are poorly trained
KNOBS = {  # build knobs per kind
    "flat": (),
    "hnsw": ("M", "ef_construction", "ef_search"),
    "ivf": ("nlist", "nprobe", "train_size"),
    "ivfpq": ("nlist", "nprobe", "train_size", "pq_m", "pq_nbits"),
}
SEARCH_KNOB = {"hnsw": "ef_search", "ivf": "nprobe", "ivfpq": "nprobe"}  # settable after build
FAISS_TYPE = {  # what faiss.read_index returns for each kind
    "flat": faiss.IndexFlat,
    "hnsw": faiss.IndexHNSW,
    "ivf": faiss.IndexIVFFlat,
    "ivfpq": faiss.IndexIVFPQ,
}


def positive_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range [{low}, {high if high else 'inf'}]")
    return int(value)


def choose(kind: str, n: int, flat_max: int, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Resolve ``auto`` by size and check that every given knob applies to the kind.

    Returns:
        The concrete kind and the knobs that apply to it (for ``auto`` the rest are dropped).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; available: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "flat" if n < flat_max else "ivf"
        given = {key: value for key, value in given.items() if key in KNOBS[kind]}
    for key in given:
        if key not in KNOBS[kind]:
            users = [k for k, names in KNOBS.items() if key in names]
            raise ValueError(f"{key} does not apply to kind={kind!r}; it applies to {users}")
    if n == 0 and kind != "flat":
        raise ValueError(f"kind={kind!r} must be trained on vectors; got 0, use kind='flat'")
    return kind, given


def default_nlist(n: int) -> int:
    """4 * sqrt(N) cells, but never fewer than 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


def resolve_knobs(kind: str, given: dict[str, Any], n: int, d: int) -> dict[str, Any]:
    """Fill defaults and validate the knobs of ``kind`` for N vectors of dimension D."""
    if kind == "hnsw":
        return {
            "M": positive_int("M", given.get("M", 32), 2, 512),
            "ef_construction": positive_int("ef_construction", given.get("ef_construction", 80)),
            "ef_search": positive_int("ef_search", given.get("ef_search", 64)),
        }
    if kind not in ("ivf", "ivfpq"):
        return {}
    nlist = positive_int("nlist", given.get("nlist", default_nlist(n)), 1, max(n, 1))
    nprobe = given.get("nprobe", min(nlist, max(8, nlist // 64)))
    knobs = {"nlist": nlist, "nprobe": positive_int("nprobe", nprobe, 1, nlist)}
    need = nlist
    if kind == "ivfpq":
        divisors = [m for m in range(1, d + 1) if d % m == 0]
        pq_m = given.get("pq_m", max(m for m in divisors if m <= max(1, d // 8)))
        if pq_m not in divisors:
            raise ValueError(f"pq_m={pq_m!r} must divide dim={d}; valid choices: {divisors}")
        knobs["pq_m"] = int(pq_m)
        knobs["pq_nbits"] = positive_int("pq_nbits", given.get("pq_nbits", 8), 1, 16)
        need = max(nlist, 2 ** knobs["pq_nbits"])
    # faiss advises 39-256 points per k-means centroid; 64 per cell (and per PQ centroid) is
    # plenty and keeps training time bounded as N grows
    default_train = min(n, max(64 * nlist, 64 * 2 ** knobs.get("pq_nbits", 0)))
    knobs["train_size"] = positive_int("train_size", given.get("train_size", default_train), 1, n)
    if knobs["train_size"] < need:
        raise ValueError(
            f"kind={kind!r} needs at least {need} training vectors (nlist={nlist}"
            + (f", 2**pq_nbits={2 ** knobs['pq_nbits']}" if kind == "ivfpq" else "")
            + f"), got {knobs['train_size']}; add vectors, lower nlist or use kind='flat'"
        )
    return knobs


def make_index(kind: str, x: np.ndarray, knobs: dict[str, Any], seed: int) -> faiss.Index:
    """Create, train (on a seeded sample) and fill the faiss index for normalised (N, D) ``x``."""
    spec = {
        "flat": "Flat",
        "hnsw": f"HNSW{knobs.get('M')},Flat",
        "ivf": f"IVF{knobs.get('nlist')},Flat",
        "ivfpq": f"IVF{knobs.get('nlist')},PQ{knobs.get('pq_m')}x{knobs.get('pq_nbits')}",
    }[kind]
    index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = knobs["ef_construction"]
    elif kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).cp.seed = seed  # k-means initialisation
        if kind == "ivfpq":
            index.pq.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(x.shape[0], size=knobs["train_size"], replace=False))
        index.train(x[sample])
    index.add(x)
    return index


def apply_search_params(index: faiss.Index, kind: str, knobs: dict[str, Any]) -> None:
    """Push the search knob of ``knobs`` into the faiss object."""
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = knobs["ef_search"]
    elif kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = knobs["nprobe"]
