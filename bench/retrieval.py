"""Retrieval index benchmark: the ``auto`` index (or ``--kind``) against exact Flat, same run.

Synthetic data: ``--clusters`` gaussian clusters in ``--dim`` dimensions, each spread along its own
random ``--rank``-dimensional subspace plus isotropic noise (real embeddings have a low intrinsic
dimension), L2-normalised. Queries are fresh samples from the same clusters (held out from the
index), perturbed by extra noise. With ``--embeddings FILE.npy`` the first ``--queries`` rows of a
seeded permutation are held out as queries and the rest are indexed.

Reports build time, index size (faiss serialisation), save/load time, median per-query latency
(one batched call, and one query per call), and 10-NN recall of the index against Flat.

    python bench/retrieval.py --n 1000000 --json runs/bench/retrieval.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from retrieval import Index, knn_recall  # noqa: E402
from retrieval.kinds import KINDS  # noqa: E402

K = 10


def synthetic(n: int, q: int, dim: int, clusters: int, rank: int, spread: float, seed: int):
    """(n, dim) database and (q, dim) held-out queries, float32, filled cluster by cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)  # norm ~1
    labels = rng.integers(0, clusters, n + q)
    out = np.empty((n + q, dim), np.float32)
    for c in range(clusters):
        rows = np.flatnonzero(labels == c)
        basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim)  # rows ~unit
        z = rng.standard_normal((rows.size, rank)).astype(np.float32) * (spread / np.sqrt(rank))
        noise = rng.standard_normal((rows.size, dim)).astype(np.float32) * (0.2 / np.sqrt(dim))
        out[rows] = centres[c] + z @ basis + noise  # centre norm ~1, low-rank ~spread, noise ~0.2
    queries = out[n:] + rng.standard_normal((q, dim)).astype(np.float32) * (0.1 / np.sqrt(dim))
    return out[:n], queries


def from_file(path: str, q: int, seed: int):
    emb = np.load(path, mmap_mode="r")
    if emb.ndim != 2 or emb.shape[0] <= q:
        raise SystemExit(f"{path}: need a (N, D) array with N > --queries={q}, got {emb.shape}")
    order = np.random.default_rng(seed).permutation(emb.shape[0])
    return np.asarray(emb[np.sort(order[q:])], np.float32), np.asarray(emb[order[:q]], np.float32)


def latency_ms(index: Index, queries: np.ndarray, single: int, repeats: int) -> dict[str, float]:
    """Median ms per query: whole batch per call (over repeats), and one query per call."""
    batch = []
    for _ in range(repeats):
        t = time.perf_counter()
        index.search(queries, K)
        batch.append((time.perf_counter() - t) * 1e3 / len(queries))
    one = []
    for row in queries[:single]:
        t = time.perf_counter()
        index.search(row[None], K)
        one.append((time.perf_counter() - t) * 1e3)
    return {"batch_ms": statistics.median(batch), "single_ms": statistics.median(one)}


def measure(name: str, build, queries: np.ndarray, args) -> tuple[Index, dict]:
    t = time.perf_counter()
    index = build()
    row = {"kind": index.kind, "knobs": index.knobs, "build_s": time.perf_counter() - t}
    row["calibration"] = index.calibration
    row["index_bytes"] = int(faiss.serialize_index(index.faiss_index).nbytes)
    row.update(latency_ms(index, queries, args.single, args.repeats))
    print(
        f"{name:>5}: {index!r}\n       build {row['build_s']:.1f}s, "
        f"{row['index_bytes'] / 2**20:.0f} MiB, {row['batch_ms']:.3f} ms/query batched, "
        f"{row['single_ms']:.3f} ms/query single",
        flush=True,
    )
    return index, row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors (synthetic)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--rank", type=int, default=32, help="intrinsic dimension per cluster")
    p.add_argument("--spread", type=float, default=1.0, help="cluster radius / centre norm")
    p.add_argument("--embeddings", help="(N, D) .npy of real embeddings instead of synthetic")
    p.add_argument("--kind", default="auto", choices=KINDS, help="index under test")
    p.add_argument("--flat-max", type=int, default=None, help="auto's Flat threshold")
    p.add_argument("--single", type=int, default=100, help="queries timed one per call")
    p.add_argument("--repeats", type=int, default=3, help="batched search repeats")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    t = time.perf_counter()
    if args.embeddings:
        xb, xq = from_file(args.embeddings, args.queries, args.seed)
    else:
        xb, xq = synthetic(
            args.n, args.queries, args.dim, args.clusters, args.rank, args.spread, args.seed
        )
    print(
        f"data: {xb.shape[0]} x {xb.shape[1]} database, {len(xq)} queries "
        f"({time.perf_counter() - t:.1f}s); faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads",
        flush=True,
    )

    flat, exact = measure("flat", lambda: Index.build(xb, kind="flat"), xq, args)
    _, exact_ids = flat.search(xq, K)
    del flat  # frees its copy of the vectors
    knobs = {"flat_max": args.flat_max} if args.flat_max is not None else {}
    test, row = measure(args.kind, lambda: Index.build(xb, kind=args.kind, **knobs), xq, args)
    _, ids = test.search(xq, K)
    row["recall_at_10"] = knn_recall(ids, exact_ids)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        test.save(Path(tmp) / "ix")
        row["save_s"] = time.perf_counter() - t
        t = time.perf_counter()
        Index.load(Path(tmp) / "ix")
        row["load_s"] = time.perf_counter() - t

    ratios = {
        "speedup_batch": exact["batch_ms"] / row["batch_ms"],
        "speedup_single": exact["single_ms"] / row["single_ms"],
        "recall_at_10": row["recall_at_10"],
        "size_ratio": row["index_bytes"] / exact["index_bytes"],
        "build_ratio": row["build_s"] / max(exact["build_s"], 1e-9),
    }
    print(
        f"{args.kind} vs flat: {ratios['speedup_batch']:.1f}x batched, "
        f"{ratios['speedup_single']:.1f}x single, recall@10 {ratios['recall_at_10']:.4f}, "
        f"size x{ratios['size_ratio']:.2f}, build x{ratios['build_ratio']:.1f}; "
        f"save {row['save_s']:.2f}s, load+verify {row['load_s']:.2f}s"
    )
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n": int(xb.shape[0]),
        "dim": int(xb.shape[1]),
        "queries": len(xq),
        "flat": exact,
        "index": row,
        "ratios": ratios,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "env": {
            "faiss": faiss.__version__,
            "threads": faiss.omp_get_max_threads(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }
    if args.json:
        from vlseg.atomic import write_json  # here, so that the timings never import vlseg

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
