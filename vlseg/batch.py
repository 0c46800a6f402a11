"""Batch prediction over a manifest: many images through batched encoders, masks and a results
JSONL on disk, resumable, and sharded across processes under ``torchrun`` (each rank takes every
``WORLD_SIZE``-th image and writes its own results file).

    vlseg predict --data data/phantoms --split test --out runs/pred
    torchrun --nproc_per_node 2 -m vlseg.cli predict --data data/phantoms --out runs/pred
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .atomic import atomic_write
from .data.io import save_mask_png
from .data.manifest import Record, read_manifest

RESULTS = "results-rank{rank:03d}.jsonl"
RUN = "predict_run.json"  # what answered the records: a resumed run must be the same one


class _Images(Dataset):
    """Unique images of the records, loaded the way the model was validated (in workers)."""

    def __init__(self, seg, images: list[Path]):
        self.seg, self.images = seg, images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.seg.load_image(self.images[i])


def _done_ids(out: Path) -> set[str]:
    """Record ids already answered by any rank (a crash leaves at most a partial last line)."""
    done = set()
    for path in out.glob("results-rank*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                continue
    return done


def _drop_torn_line(path: Path) -> None:
    """Cut a partial last line that an interrupted run left, so appending starts clean."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def _mask_name(record_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id) + ".png"


def predict_manifest(
    seg,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    text: str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
) -> dict:
    """Answer every record of a manifest (its first prompt, or ``text``) and write the results.

    Writes ``out/masks/<record id>.png`` (at the image's resolution) and one JSON line per
    record to ``out/results-rank<r>.jsonl`` (id, image, text, verdict, score, area_px,
    area_mm2, n_components, ood_score, mask). Records already in any results file are skipped,
    so an interrupted run continues where it stopped.

    Args:
        seg: a ``Segmenter``.
        rank, world: this process's shard (default: ``RANK`` / ``WORLD_SIZE`` from torchrun,
            else 0 / 1).

    Returns:
        {"records": answered now, "skipped": this shard's records answered before, "images":
        images encoded}.
    """
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    _same_run(out, seg, data=os.path.abspath(data), text=text, split=split)
    records = read_manifest(data, split)
    # The shard is fixed by the manifest alone, so every rank (and every restart) splits the
    # same list; what is already answered is dropped within the shard.
    mine = set(sorted({r.image for r in records})[rank::world])
    done = _done_ids(out)
    by_image: dict[Path, list[Record]] = {}
    skipped = 0
    for r in records:
        if r.image not in mine:
            continue
        if r.id in done:
            skipped += 1
            continue
        by_image.setdefault(r.image, []).append(r)
    images = sorted(by_image)
    loader = DataLoader(
        _Images(seg, images),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    answered = 0
    results_path = out / RESULTS.format(rank=rank)
    _drop_torn_line(results_path)
    with open(results_path, "a", encoding="utf-8") as fh:
        for batch in tqdm(loader, desc=f"predict (rank {rank})", disable=not progress):
            encoded = seg.encode([loaded for _, loaded in batch])
            for row, (path, _) in enumerate(batch):
                recs = by_image[path]
                if recs[0].spacing is not None:  # the manifest's spacing overrides the file's
                    encoded.spacings[row] = recs[0].spacing
                one = encoded[row]
                # one decoder call per image: its prompts share the image's features (a call
                # over all images' prompts at once is slower on CPU: larger working set)
                texts = [text or r.prompts[0] for r in recs]
                results = seg.postprocess(seg.decode(one, texts), one)
                for rec, res in zip(recs, results, strict=True):
                    fh.write(json.dumps(_row(rec, res, out)) + "\n")
                    answered += 1
            fh.flush()
    return {"records": answered, "skipped": skipped, "images": len(images)}


def _same_run(out: Path, seg, **settings) -> None:
    """Record what answers the records (model, weights with any adapter, prompt, split) in
    ``out/predict_run.json``, or check that a folder with earlier answers got them from the same
    settings: resuming with another model, adapter or ``--text`` would silently keep the old
    answers."""
    from .adapters import state_dict_sha256
    from .atomic import write_json

    run = {
        "model": seg.name,
        "weights_sha256": state_dict_sha256(seg.model, adapters=True),
        "serving": json.loads(json.dumps(seg.serving.to_dict(), default=str)),
    }
    run.update({k: v for k, v in settings.items()})
    path = out / RUN
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in run if old.get(k) != run[k]]
        if changed:
            what = ", ".join(f"{k} {old.get(k)!r} -> {run[k]!r}" for k in changed)
            raise ValueError(
                f"{out} holds answers from another run ({what}); give a new --out, or delete "
                "the folder to answer again"
            )
        return
    if any(out.glob("results-rank*.jsonl")):
        return  # answers from before runs were recorded: nothing to compare with
    write_json(path, run)


def _row(rec: Record, res, out: Path) -> dict:
    name = _mask_name(rec.id)
    with atomic_write(out / "masks" / name) as tmp:
        save_mask_png(res.mask, tmp)
    return {
        "id": rec.id,
        "image": str(rec.image),
        "text": res.text,
        "verdict": res.verdict,
        "score": round(float(res.score), 6),
        "area_px": res.area_px,
        "area_mm2": None if res.area_mm2 is None else round(float(res.area_mm2), 4),
        "n_components": res.n_components,
        "ood_score": None if res.ood_score is None else round(float(res.ood_score), 4),
        "mask": f"masks/{name}",
    }


def read_results(out: str | os.PathLike) -> list[dict]:
    """Every rank's results, sorted by record id."""
    rows = []
    for path in sorted(Path(out).glob("results-rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of an interrupted run
                continue
    return sorted(rows, key=lambda r: r["id"])


def masks_equal(a: str | os.PathLike, b: str | os.PathLike, ids: Sequence[str]) -> bool:
    """Whether two prediction directories wrote the same masks for ``ids``."""
    from .data.io import load_mask

    return all(
        np.array_equal(
            load_mask(Path(a) / "masks" / _mask_name(i)),
            load_mask(Path(b) / "masks" / _mask_name(i)),
        )
        for i in ids
    )
