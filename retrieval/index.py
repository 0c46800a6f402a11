"""``Index``: faiss over L2-normalised float32 embeddings (inner product = cosine) plus metadata.

Faiss id i is row i of the metadata sidecar. The index type follows the size (``kind="auto"``):

- ``flat``  exact search; the default below ``flat_max`` (50k) vectors.
- ``ivf``   IVF-Flat, ``nlist = 4 * sqrt(N)`` cells trained by k-means on a seeded sample; the
  ``auto`` choice from ``flat_max`` up, with ``nprobe`` calibrated at build time to reach
  ``target_recall`` (0.95) 10-NN recall against exact search on held-in sample queries.
- ``hnsw``  HNSW graph (M=32, efConstruction=80, efSearch=64); explicit only: lowest single-query
  latency, at a graph build and 8*M bytes per vector (why auto prefers IVF: :mod:`retrieval.kinds`).
- ``ivfpq`` IVF with product quantisation (``pq_m`` bytes per vector at 8 bits): for collections
  that do not fit in memory as float32. Lossy; explicit only.

On disk (:meth:`Index.save`): ``index.faiss``, ``metadata.jsonl`` and ``index.json`` (kind, dim,
ntotal, knobs, sha256 and size of both files, format version), swapped in atomically.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import faiss
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "retrieval.Index needs faiss; install it with: pip install 'vlseg[retrieval]'"
    ) from err

from retrieval import kinds, store
from retrieval.kinds import FLAT_MAX, KINDS, SEARCH_KNOB, positive_int
from retrieval.metrics import knn_recall

__all__ = ["FLAT_MAX", "FORMAT_VERSION", "KINDS", "Index"]

FORMAT = "vlseg.retrieval.index"
FORMAT_VERSION = 1
INDEX_FILE, META_FILE, MANIFEST_FILE = "index.faiss", "metadata.jsonl", store.MARKER
CALIBRATION_QUERIES, CALIBRATION_K = 256, 10


def _as_matrix(x: Any, name: str, dim: int | None = None, *, allow_1d: bool = False) -> np.ndarray:
    """Validate and L2-normalise embeddings; returns a new C-contiguous float32 (N, D) array."""
    arr = np.asarray(x)
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or (
        arr.dtype == np.bool_
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}; cast to float32")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (N, D) with D >= 1, got {arr.shape}; "
            "stack embeddings into one 2-D array (x.reshape(-1, D))"
        )
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} have dimension {arr.shape[1]} but the index holds {dim}-d vectors; "
            "embed them with the same model and projection as the indexed vectors"
        )
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{name} rows {bad[:5].tolist()} contain NaN or inf (after casting to float32); "
            "drop or fix them first"
        )
    norms = np.linalg.norm(out, axis=1)  # (N,)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{name} rows {zero[:5].tolist()} are all zeros and cannot be normalised")
    out /= norms[:, None]
    return out


def _drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(Q, k+1) neighbour ids -> (Q, k) without each query's own id (for in-sample queries)."""
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for i, (row, own) in enumerate(zip(ids, self_ids, strict=True)):
        kept = row[row != own][:k]
        out[i, : kept.size] = kept
    return out


def _read_manifest(src: Path, fix: str) -> dict[str, Any]:
    """Parse index.json and check that it is complete and names files that exist."""
    path = src / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest; {fix}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{src} was saved with format_version {manifest['format_version']}, this code reads"
            f" <= {FORMAT_VERSION}; upgrade vlseg"
        )
    missing = [key for key in ("kind", "dim", "ntotal", "knobs", "files") if key not in manifest]
    files = manifest.get("files", {})
    missing += [
        f"files.{name}.sha256"
        for name in (INDEX_FILE, META_FILE)
        if "sha256" not in files.get(name, {})
    ]
    if missing:
        raise ValueError(f"{path} lacks {missing}; {fix}")
    kind = manifest["kind"]
    if kind not in kinds.KNOBS:
        raise ValueError(f"{path} has kind {kind!r}, expected one of {list(kinds.KNOBS)}")
    if kind in SEARCH_KNOB and SEARCH_KNOB[kind] not in manifest["knobs"]:
        raise ValueError(f"{path} lacks knob {SEARCH_KNOB[kind]!r} of kind {kind!r}; {fix}")
    for name in (INDEX_FILE, META_FILE):
        if not (src / name).is_file():
            raise ValueError(f"{name} is missing from {src}; {fix}")
    return manifest


class Index:
    """Faiss index over L2-normalised embeddings with one metadata dict per vector.

    Create with :meth:`build` or :meth:`load`. Every vector passed in (database or query) is cast
    to float32 and L2-normalised, so scores are cosine similarities in [-1, 1].

    Example::

        index = Index.build(image_emb, [{"image": p} for p in paths])  # (N, D)
        hits = index.search_meta(text_emb, k=5)  # text -> image
        index.save("runs/index/phantoms"); index = Index.load("runs/index/phantoms")
    """

    def __init__(
        self, faiss_index: faiss.Index, *, kind: str, knobs: dict[str, Any], rows: list[str]
    ) -> None:
        """Wrap a faiss index (use :meth:`build` or :meth:`load` instead of calling this)."""
        assert faiss_index.ntotal == len(rows), "faiss ids and metadata rows out of step"
        self._index = faiss_index
        self._rows = rows  # row i: the JSON text of faiss id i's metadata
        self.kind = kind
        self._knobs = dict(knobs)
        self.calibration: dict[str, Any] | None = None  # how the search knob was chosen, if tuned
        self._apply_search_params()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        kind: str = "auto",
        flat_max: int = FLAT_MAX,
        nlist: int | None = None,
        nprobe: int | None = None,
        M: int | None = None,  # noqa: N803 - the name faiss and the HNSW paper use
        ef_construction: int | None = None,
        ef_search: int | None = None,
        pq_m: int | None = None,
        pq_nbits: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
        target_recall: float | None = None,
    ) -> Index:
        """Build an index over ``vectors``.

        Args:
            vectors: (N, D) embeddings, any real dtype; normalised here. N may be 0 for ``flat``.
            metadata: N JSON-serialisable dicts (row i describes vector i); keys ``id`` and
                ``score`` are reserved. None gives empty dicts.
            kind: one of ``auto``, ``flat``, ``hnsw``, ``ivf``, ``ivfpq``. ``auto`` is ``flat``
                below ``flat_max`` vectors and ``ivf`` from there on; knobs that do not apply to
                the kind auto picks are ignored (for an explicit kind they raise).
            flat_max: size threshold of ``auto``.
            nlist: IVF cells; default 4*sqrt(N), capped so each cell has >= 39 training points.
            nprobe: IVF cells visited per query; default max(8, nlist/64), calibrated for auto.
            M: HNSW neighbours per node (default 32; costs 8*M bytes per vector on top of 4*D).
            ef_construction: HNSW build beam width (default 80).
            ef_search: HNSW search beam width (default 64).
            pq_m: IVF-PQ sub-quantisers = bytes per vector at 8 bits; must divide D (default
                the largest divisor <= D/8, e.g. 64 for D=512: 32x smaller than float32).
            pq_nbits: bits per sub-quantiser code (default 8).
            train_size: k-means training sample, drawn without replacement with ``seed``
                (default min(N, 64*nlist), and >= 64*2**pq_nbits for ``ivfpq``). IVF-PQ trains
                its codebooks on this sample only, so beyond memory train on a representative
                in-memory sample and stream the rest in with :meth:`add`.
            seed: seed of the training sample, of k-means and of the calibration queries.
            target_recall: if set (default 0.95 for ``auto``), tune nprobe / ef_search (unless
                given) to the smallest value whose 10-NN recall against exact search reaches it,
                on up to 256 indexed vectors used as queries (their own id excluded).

        Returns:
            The index, with faiss ids 0..N-1 in row order.
        """
        if kind not in KINDS:  # before the costly validation below
            raise ValueError(f"unknown kind {kind!r}; available: {', '.join(KINDS)}")
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1] or None, got {target_recall}")
        x = _as_matrix(vectors, "vectors")  # (N, D)
        n, d = x.shape
        rows = store.encode_rows([{}] * n if metadata is None else metadata)
        if len(rows) != n:
            raise ValueError(
                f"vectors has {n} rows but metadata has {len(rows)} entries; "
                "pass one dict per vector"
            )
        given = dict(
            nlist=nlist,
            nprobe=nprobe,
            M=M,
            ef_construction=ef_construction,
            ef_search=ef_search,
            pq_m=pq_m,
            pq_nbits=pq_nbits,
            train_size=train_size,
        )
        given = {key: value for key, value in given.items() if value is not None}
        if kind == "auto" and target_recall is None:
            target_recall = 0.95
        resolved, given = kinds.choose(kind, n, flat_max, given)
        knobs = kinds.resolve_knobs(resolved, given, n, d)
        if resolved in ("ivf", "ivfpq"):
            knobs["seed"] = int(seed)
        index = kinds.make_index(resolved, x, knobs, int(seed))
        out = cls(index, kind=resolved, knobs=knobs, rows=rows)
        tunable = SEARCH_KNOB.get(resolved)
        if target_recall is not None and tunable is not None and tunable not in given:
            out._self_calibrate(x, float(target_recall), seed)
        return out

    def _self_calibrate(self, x: np.ndarray, target: float, seed: int) -> None:
        """Tune the search knob on up to 256 indexed vectors used as queries (own id excluded)."""
        n = x.shape[0]
        nq, k = min(CALIBRATION_QUERIES, n), min(CALIBRATION_K, n - 1)
        if k < 1:
            return
        qids = np.sort(np.random.default_rng(seed + 1).choice(n, size=nq, replace=False))
        _, exact = faiss.knn(x[qids], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        self._tune(x[qids], _drop_self(exact, qids, k), target, qids)

    def calibrate(
        self, queries: np.ndarray, exact_ids: np.ndarray, *, target_recall: float = 0.95
    ) -> dict[str, Any]:
        """Set nprobe / ef_search to the smallest value reaching ``target_recall`` on your queries.

        Build-time calibration uses indexed vectors as queries; cross-modal queries (text ->
        image) sit elsewhere in embedding space and may need more. Get ``exact_ids`` from an
        exact ``kind="flat"`` index over the same vectors.

        Args:
            queries: (Q, D) representative queries.
            exact_ids: (Q, k) exact top-k ids of each query.
            target_recall: wanted k-NN recall in (0, 1].

        Returns:
            The calibration record (also kept in :attr:`calibration` and saved).
        """
        if self.kind not in SEARCH_KNOB:
            raise ValueError(f"kind={self.kind!r} is exact and has nothing to calibrate")
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        q = _as_matrix(queries, "queries", self.dim, allow_1d=True)
        exact = np.asarray(exact_ids)
        if exact.ndim != 2 or exact.shape[0] != q.shape[0]:
            raise ValueError(f"exact_ids must be (Q={q.shape[0]}, k), got {exact.shape}")
        self._tune(q, exact, target_recall, None)
        assert self.calibration is not None
        return dict(self.calibration)

    def _tune(
        self, q: np.ndarray, exact: np.ndarray, target: float, self_ids: np.ndarray | None
    ) -> None:
        knob, k = SEARCH_KNOB[self.kind], exact.shape[1]
        if knob == "nprobe":
            nlist = self._knobs["nlist"]
            ladder = [2**i for i in range(nlist.bit_length()) if 2**i < nlist] + [nlist]
        else:
            ladder = [max(16, k) * 2**i for i in range(7)]  # up to 64x; past that raise M
        for value in ladder:
            self.set_search_params(**{knob: value})
            _, ids = self._index.search(q, k + (self_ids is not None))
            got = ids if self_ids is None else _drop_self(ids, self_ids, k)
            recall = knn_recall(got, exact)
            if recall >= target:
                break
        else:
            warnings.warn(
                f"{self.kind} reached {k}-NN recall {recall:.3f} < target {target} even at "
                f"{knob}={value}; use kind='flat' or a larger nlist / M",
                stacklevel=3,
            )
        self.calibration = {
            "target": target,
            "recall": round(recall, 4),
            knob: value,
            "queries": int(q.shape[0]),
            "k": int(k),
        }

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors (= metadata rows)."""
        return int(self._index.ntotal)

    @property
    def faiss_index(self) -> faiss.Index:
        """The wrapped faiss object (e.g. for ``faiss.serialize_index`` or a GPU clone)."""
        return self._index

    def __len__(self) -> int:
        return self.ntotal

    @property
    def knobs(self) -> dict[str, Any]:
        """A copy of the build and search parameters (see :meth:`build`)."""
        return dict(self._knobs)

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self._knobs.items())
        return f"Index(kind={self.kind!r}, dim={self.dim}, ntotal={self.ntotal}" + (
            f", {knobs})" if knobs else ")"
        )

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall/speed trade-off of a built or loaded index.

        Args:
            nprobe: IVF cells visited per query, in [1, nlist] (``ivf``, ``ivfpq``).
            ef_search: HNSW search beam width >= 1 (``hnsw``); faiss uses max(ef_search, k).
        """
        updates = {}
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is None:
                continue
            if SEARCH_KNOB.get(self.kind) != name:
                users = [k for k, v in SEARCH_KNOB.items() if v == name]
                hint = (
                    f"tune {SEARCH_KNOB[self.kind]} instead"
                    if self.kind in SEARCH_KNOB
                    else "it is exact, nothing to tune"
                )
                raise ValueError(
                    f"{name} applies to kinds {users}; this index is {self.kind!r} ({hint})"
                )
            high = self._knobs["nlist"] if name == "nprobe" else None
            updates[name] = positive_int(name, value, 1, high)
        self._knobs.update(updates)  # all or nothing
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        kinds.apply_search_params(self._index, self.kind, self._knobs)

    # ------------------------------------------------------------------ adding and searching
    def add(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Append vectors; they get faiss ids ntotal .. ntotal+N-1.

        IVF cells and calibration stay those of the build: after growing an ``ivf`` index well
        beyond what it was built with (~10x), rebuild it.

        Args:
            vectors: (N, D) embeddings.
            metadata: N dicts, or None for empty ones.
        """
        x = _as_matrix(vectors, "vectors", self.dim)
        rows = store.encode_rows([{}] * len(x) if metadata is None else metadata, start=self.ntotal)
        if len(rows) != len(x):
            raise ValueError(
                f"vectors has {len(x)} rows but metadata has {len(rows)} entries; "
                "pass one dict per vector"
            )
        self._index.add(x)
        self._rows.extend(rows)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most similar indexed vectors per query.

        Args:
            queries: (Q, D) or (D,) embeddings; normalised here.
            k: neighbours per query, >= 1; clamped to ntotal.

        Returns:
            scores: (Q, k') float32 cosine similarities, best first (-inf where no result).
            ids: (Q, k') int64 faiss ids (= metadata rows), -1 where an approximate index found
            fewer than k'; k' = min(k, ntotal).
        """
        k = positive_int("k", k)
        if self.ntotal == 0:
            raise RuntimeError("the index is empty; call add(vectors, metadata) before searching")
        q = _as_matrix(queries, "queries", self.dim, allow_1d=True)  # (Q, D)
        scores, ids = self._index.search(q, min(k, self.ntotal))  # (Q, k'), (Q, k')
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def metadata(self, i: int) -> dict[str, Any]:
        """The metadata dict of faiss id ``i`` (a fresh copy)."""
        i = positive_int("id", i, 0, self.ntotal - 1)
        return json.loads(self._rows[i])

    def search_meta(self, queries: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
        """Like :meth:`search`, returning per query a best-first list of metadata dicts.

        Returns:
            Q lists of up to k dicts: the row's metadata plus ``id`` (int) and ``score`` (float).
        """
        scores, ids = self.search(queries, k)
        return [
            [
                {**json.loads(self._rows[i]), "id": i, "score": s}
                for s, i in zip(srow.tolist(), irow.tolist(), strict=True)
                if i >= 0
            ]
            for srow, irow in zip(scores, ids, strict=True)
        ]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index atomically: a kill at any moment leaves the old or the new save whole.

        Files are written and fsynced in a temp sibling directory, which then replaces
        ``directory`` by renames (see :mod:`retrieval.store`). One writer at a time.

        Returns:
            The directory written.
        """
        target = Path(directory)
        with store.atomic_dir(target) as tmp:
            faiss.write_index(self._index, str(tmp / INDEX_FILE))
            store.fsync_file(tmp / INDEX_FILE)
            meta = store.write_jsonl(tmp / META_FILE, self._rows)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "metric": "inner_product",
                "normalized": True,
                "dim": self.dim,
                "ntotal": self.ntotal,
                "knobs": self._knobs,
                "calibration": self.calibration,
                "files": {
                    INDEX_FILE: {
                        "sha256": store.sha256_file(tmp / INDEX_FILE),
                        "bytes": (tmp / INDEX_FILE).stat().st_size,
                    },
                    META_FILE: {
                        "sha256": meta["sha256"],
                        "bytes": meta["bytes"],
                        "rows": meta["rows"],
                    },
                },
                "faiss_version": faiss.__version__,
                "python": platform.python_version(),
            }
            with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> Index:
        """Load a saved index, checking that its three files agree.

        Args:
            directory: what :meth:`save` wrote.
            verify: also check the sha256 of both files (reads them once more; turn off only
                for trusted, very large indexes).

        Returns:
            The index, with the saved search knobs applied.

        Raises:
            FileNotFoundError: nothing saved at ``directory``.
            ValueError: a file is missing, unreadable, or disagrees with the others.
        """
        src = store.resolve_dir(directory)
        fix = f"rebuild it with Index.build(vectors, metadata).save({str(directory)!r})"
        manifest = _read_manifest(src, fix)
        kind = manifest["kind"]
        rows = store.read_jsonl(src / META_FILE)
        try:
            index = faiss.read_index(str(src / INDEX_FILE))
        except RuntimeError as err:
            raise ValueError(f"{INDEX_FILE} in {src} is not a faiss index ({err}); {fix}") from err
        if index.ntotal != len(rows):
            raise ValueError(
                f"index has {index.ntotal} vectors but {META_FILE} has {len(rows)} rows; {fix}"
            )
        if index.ntotal != manifest["ntotal"]:
            raise ValueError(
                f"{INDEX_FILE} has {index.ntotal} vectors but index.json records "
                f"{manifest['ntotal']}; {fix}"
            )
        if index.d != manifest["dim"]:
            raise ValueError(
                f"{INDEX_FILE} holds {index.d}-d vectors but index.json records dim "
                f"{manifest['dim']}; {fix}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{INDEX_FILE} does not use the inner-product metric; {fix}")
        if verify:
            for name in (INDEX_FILE, META_FILE):
                want, got = manifest["files"][name]["sha256"], store.sha256_file(src / name)
                if got != want:
                    raise ValueError(
                        f"{name} sha256 {got[:12]}... does not match index.json ({want[:12]}...): "
                        f"it changed after saving; {fix}"
                    )
        if not isinstance(index, kinds.FAISS_TYPE[kind]):
            raise ValueError(
                f"{INDEX_FILE} is a faiss {type(index).__name__} but index.json says kind "
                f"{kind!r}; {fix}"
            )
        out = cls(index, kind=kind, knobs=manifest["knobs"], rows=rows)
        out.calibration = manifest.get("calibration")
        return out
