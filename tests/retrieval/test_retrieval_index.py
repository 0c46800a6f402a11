"""retrieval.Index: exact and approximate search, auto kind, save/load checks, crash-safe save."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# This folder has no __init__.py, so when the repo root is not on sys.path (plain `pytest`, not
# `python -m pytest`) `import retrieval` would find it as a namespace package; the real one wins.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

faiss = pytest.importorskip("faiss")

from retrieval import Index, knn_recall, recall_at_k, retrieval_recall  # noqa: E402
from retrieval.index import FLAT_MAX  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One OpenMP thread: small indexes gain nothing from more, and busy CPUs make spinning slow."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, d: int = 32, *, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """(n, d) float32 points around ``clusters`` gaussian centres (same centres for any n)."""
    centres = np.random.default_rng(1000).standard_normal((clusters, d))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d))).astype(
        np.float32
    )


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_ids(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(normalised(q) @ normalised(x).T), axis=1, kind="stable")[:, :k]


def assert_exact_knn(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> None:
    """``ids`` are the exact top-k, in order, up to fp32 ties: their float64 cosines are the true
    top-k cosines. (Clustered data has neighbours 4e-7 apart, closer than the fp32 rounding of
    faiss's or BLAS's kernels on another CPU, so the ids of such a pair may come either way.)"""
    sims = normalised(q.astype(np.float64)) @ normalised(x.astype(np.float64)).T
    want = -np.sort(-sims, axis=1)[:, :k]
    assert ids.shape == want.shape and all(len(set(row)) == k for row in ids.tolist())
    # fp32 cosines of unit vectors over d terms err by <= d * 2^-24 (2e-6 for d=32): closer is a tie
    np.testing.assert_allclose(np.take_along_axis(sims, ids, axis=1), want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- search


def test_flat_equals_brute_force():
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((500, 16)), rng.standard_normal((7, 16))  # float64 on purpose
    index = Index.build(x, [{"row": i} for i in range(500)], kind="flat")
    scores, ids = index.search(q, 10)
    sims = normalised(q) @ normalised(x).T  # (7, 500)
    want = exact_ids(x, q, 10)
    np.testing.assert_array_equal(ids, want)  # consecutive top-11 cosines >= 1.8e-4 apart: no ties
    # fp32 cosines over d=16 terms: error <= 16 * 2^-24 ~ 1e-6 (measured 1.3e-7)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, axis=1), atol=1e-5)
    assert ids.dtype == np.int64 and scores.shape == (7, 10)
    hits = index.search_meta(q[0], 3)  # a (D,) query is one query
    assert [h["id"] for h in hits[0]] == want[0, :3].tolist()
    assert hits[0][0]["row"] == want[0, 0] and hits[0][0]["score"] == pytest.approx(scores[0, 0])


def test_auto_kind_follows_size():
    assert FLAT_MAX == 50_000
    small = Index.build(clustered(300), kind="auto", flat_max=1000, ef_search=5)  # knob ignored
    assert small.kind == "flat" and small.calibration is None
    big = Index.build(clustered(2000), kind="auto", flat_max=1000)
    assert big.kind == "ivf"
    assert big.knobs["nlist"] == min(round(4 * 2000**0.5), 2000 // 39)
    assert big.calibration["target"] == 0.95 and big.calibration["recall"] >= 0.95
    assert big.knobs["nprobe"] == big.calibration["nprobe"]


@pytest.mark.parametrize(
    "kind, knobs",
    [
        ("hnsw", {}),
        ("ivf", {}),
        ("ivf", {"target_recall": 0.95}),
        ("ivfpq", {"pq_m": 16, "pq_nbits": 4}),
    ],
)
def test_approximate_recall_on_clustered_data(kind, knobs):
    x = clustered(3000)
    q = clustered(100, seed=1)  # held-out points from the same clusters
    index = Index.build(x, kind=kind, **knobs)
    _, ids = index.search(q, 10)
    floor = 0.3 if kind == "ivfpq" else 0.9  # 8-byte PQ codes (not 128) are lossy; >> chance
    assert knn_recall(ids, exact_ids(x, q, 10)) >= floor


def test_search_params_and_determinism():
    x, q = clustered(2000), clustered(50, seed=1)
    a = Index.build(x, kind="ivf", nlist=20, nprobe=1, seed=3)
    b = Index.build(x, kind="ivf", nlist=20, nprobe=1, seed=3)
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])  # seeded training
    a.set_search_params(nprobe=20)  # every cell: exact
    assert_exact_knn(a.search(q, 10)[1], x, q, 10)
    with pytest.raises(ValueError, match="ef_search applies to kinds"):
        a.set_search_params(ef_search=10)
    with pytest.raises(ValueError, match=r"nprobe=21 is out of range \[1, 20\]"):
        a.set_search_params(nprobe=21)
    h = Index.build(x[:500], kind="hnsw", M=8, ef_search=16)
    h.set_search_params(ef_search=200)
    assert faiss.downcast_index(h.faiss_index).hnsw.efSearch == 200 and h.knobs["ef_search"] == 200


def test_k_clamps_and_missing_results_are_filtered():
    x = clustered(200)
    scores, ids = Index.build(x[:5], kind="flat").search(x[:2], 10)
    assert ids.shape == scores.shape == (2, 5)
    ivf = Index.build(x, kind="ivf", nlist=4, nprobe=1)
    scores, ids = ivf.search(x[:3], 150)  # one cell holds fewer than 150 vectors
    assert (ids == -1).any() and np.isneginf(scores[ids == -1]).all()
    for hits, row in zip(ivf.search_meta(x[:3], 150), ids, strict=True):
        assert len(hits) == (row >= 0).sum() and all(h["id"] >= 0 for h in hits)


def test_add_appends_ids_and_metadata():
    x = clustered(60)
    index = Index.build(x[:40], [{"n": i} for i in range(40)], kind="flat")
    index.add(x[40:], [{"n": i} for i in range(40, 60)])
    assert len(index) == 60 and index.metadata(50) == {"n": 50}
    assert index.search_meta(x[55], 1)[0][0]["n"] == 55
    empty = Index.build(np.zeros((0, 8), np.float32))
    with pytest.raises(RuntimeError, match="empty; call add"):
        empty.search(np.ones(8), 3)
    empty.add(np.ones((1, 8)))
    assert empty.search_meta(np.ones(8), 3) == [[{"id": 0, "score": pytest.approx(1.0)}]]


# ---------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    (lambda i: i.search(np.ones((2, 8)), 3), "dimension 8 but the index holds 16-d"),
    (lambda i: i.search(np.ones((2, 2, 16)), 3), r"shape \(N, D\)"),
    (lambda i: i.search(np.array([["a"] * 16]), 3), "real numbers"),
    (lambda i: i.search(np.ones(16), 0), r"k=0 is out of range"),
    (lambda i: i.add(np.full((1, 16), np.nan)), r"rows \[0\] contain NaN or inf"),
    (lambda i: i.add(np.zeros((2, 16))), "all zeros"),
    (lambda i: i.add(np.ones((2, 16)), [{}]), "2 rows but metadata has 1 entries"),
    (lambda i: i.add(np.ones((1, 16)), [{"id": 3}]), "reserved key 'id'"),
    (lambda i: i.add(np.ones((1, 16)), [{"x": np.float32(1)}]), "not JSON-serialisable"),
    (lambda i: Index.build(np.ones((9, 16)), kind="ann"), "unknown kind 'ann'; available"),
    (lambda i: Index.build(np.ones((9, 16)), kind="flat", nprobe=3), "does not apply"),
    (lambda i: Index.build(np.ones((9, 16)), kind="ivf", nlist=50), r"out of range \[1, 9\]"),
    (lambda i: Index.build(clustered(300, 16), kind="ivfpq", pq_m=5), "must divide dim=16"),
    (lambda i: Index.build(np.zeros((0, 16)), kind="hnsw"), "use kind='flat'"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS)
def test_bad_input_is_named(call, message):
    index = Index.build(clustered(20, 16), kind="flat")
    with pytest.raises(ValueError, match=message):
        call(index)
    assert len(index) == 20  # nothing half-added


# ---------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    x, q = clustered(1000), clustered(20, seed=1)
    index = Index.build(x, [{"case": f"c{i}"} for i in range(1000)], kind=kind, target_recall=None)
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert (loaded.kind, loaded.dim, loaded.ntotal, loaded.knobs) == (
        kind,
        32,
        1000,
        index.knobs,
    )
    for a, b in zip(index.search(q, 10), loaded.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.search_meta(q, 5) == index.search_meta(q, 5)
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert manifest["format_version"] == 1 and manifest["files"]["metadata.jsonl"]["rows"] == 1000
    if kind != "flat":
        knob = {"hnsw": "ef_search", "ivf": "nprobe"}[kind]
        loaded.set_search_params(**{knob: 7})
        assert loaded.knobs[knob] == 7


def test_load_detects_tampering(tmp_path):
    x = clustered(300, 16)
    Index.build(x, [{"i": i} for i in range(300)], kind="flat").save(tmp_path / "a")
    Index.build(x[:100], kind="flat").save(tmp_path / "small")

    meta = tmp_path / "a" / "metadata.jsonl"
    lines = meta.read_text().splitlines(keepends=True)
    meta.write_text("".join(lines[:-1]))  # one row removed
    with pytest.raises(ValueError, match="index has 300 vectors but metadata.jsonl has 299 rows"):
        Index.load(tmp_path / "a")
    meta.write_text("".join(lines[:-1]) + '{"i":"edited"}\n')  # right count, wrong content
    with pytest.raises(ValueError, match="metadata.jsonl sha256 .* does not match index.json"):
        Index.load(tmp_path / "a")
    assert Index.load(tmp_path / "a", verify=False).metadata(299) == {"i": "edited"}

    meta.write_text("".join(lines))
    Index.load(tmp_path / "a")  # restored: fine again
    shutil.copy(tmp_path / "small" / "index.faiss", tmp_path / "a" / "index.faiss")
    with pytest.raises(ValueError, match="index has 100 vectors but metadata.jsonl has 300 rows"):
        Index.load(tmp_path / "a")
    Index.build(x[:100], kind="ivf", nlist=2).save(tmp_path / "ivf")
    shutil.copy(tmp_path / "small" / "index.faiss", tmp_path / "ivf" / "index.faiss")
    with pytest.raises(ValueError, match="is a faiss IndexFlatIP but index.json says kind 'ivf'"):
        Index.load(tmp_path / "ivf", verify=False)
    (tmp_path / "a" / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="is not a faiss index"):
        Index.load(tmp_path / "a")
    (tmp_path / "a" / "index.faiss").unlink()
    with pytest.raises(ValueError, match="index.faiss is missing"):
        Index.load(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no saved index"):
        Index.load(tmp_path / "nowhere")


def test_save_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        Index.build(clustered(10), kind="flat").save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_load_recovers_from_kill_between_renames(tmp_path):
    """The window between 'rename old away' and 'rename new in', reproduced by hand."""
    target = tmp_path / "ix"
    Index.build(clustered(50), [{"v": "A"}] * 50, kind="flat").save(target)
    os.rename(target, tmp_path / ".ix.old-dead")
    (tmp_path / ".ix.tmp-dead").mkdir()  # a half-written new version
    (tmp_path / ".ix.tmp-dead" / "index.faiss").write_bytes(b"half")
    assert Index.load(target).metadata(0) == {"v": "A"}  # read from the old copy
    Index.build(clustered(70), [{"v": "B"}] * 70, kind="flat").save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # stale siblings cleaned up
    assert len(Index.load(target)) == 70


CHILD = """
import sys
from retrieval.index import Index
a, b = Index.load(sys.argv[1]), Index.load(sys.argv[2])
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    a.save(sys.argv[3])
    b.save(sys.argv[3])
"""


def test_save_survives_sigkill_at_random_moments(tmp_path):
    """A child saves versions A and B in turn to one directory; we SIGKILL it at random moments."""
    xs = {"A": clustered(200, 16, seed=5), "B": clustered(300, 16, seed=6)}
    for v, x in xs.items():
        Index.build(x, [{"v": v, "i": i} for i in range(len(x))], kind="flat").save(tmp_path / v)
    target = tmp_path / "store" / "ix"
    Index.load(tmp_path / "A").save(target)  # a complete version exists before the first kill
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "A"), str(tmp_path / "B"), str(target)]
    rng, seen = random.Random(0), set()
    for _ in range(10):
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.1))  # lands anywhere in the save loop
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        index = Index.load(target)  # whole old or whole new, never a mix
        version = index.metadata(0)["v"]
        seen.add(version)
        assert len(index) == len(xs[version])
        assert all(index.metadata(i) == {"v": version, "i": i} for i in range(len(index)))
        scores, ids = index.search(xs[version][:20], 1)  # the vectors belong to the rows
        np.testing.assert_array_equal(ids[:, 0], np.arange(20))
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert seen <= {"A", "B"}
    Index.load(tmp_path / "B").save(target)  # the next save clears what the kills left behind
    assert [p.name for p in target.parent.iterdir()] == ["ix"]


# ---------------------------------------------------------------------------- metrics


def test_id_based_recall_metrics():
    ids = np.array([[3, 1, 2], [0, 5, 4], [7, 8, 9]])
    got = recall_at_k(ids, [1, [9, 4], {6}], ks=(1, 2, 3))
    assert got == {"R@1": 0.0, "R@2": pytest.approx(1 / 3), "R@3": pytest.approx(2 / 3)}
    assert recall_at_k(ids, np.array([3, 0, 7]), ks=(1,)) == {"R@1": 1.0}
    with pytest.raises(ValueError, match="query 1 has no relevant id"):
        recall_at_k(ids, [1, [], 2])
    assert knn_recall(np.array([[1, 2, -1]]), np.array([[2, 1, 3]])) == pytest.approx(2 / 3)
    x = clustered(100)
    index = Index.build(x, kind="flat")
    assert retrieval_recall(index, x[:10], np.arange(10), ks=(1, 5)) == {"R@1": 1.0, "R@5": 1.0}
