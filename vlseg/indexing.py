"""Image and caption indexes of a manifest dataset, search, and retrieval recall.

An index directory holds two ``retrieval.Index`` folders: ``images/`` (image embeddings; metadata:
image path, caption, label, modality) and ``texts/`` (one row per distinct caption; metadata: the
caption and the images it describes). Text queries search ``images/``; image queries search both.
``model.json`` records the model that made the embeddings (how to load it and a hash of its
weights): queries must be embedded by the same model, so a different one is refused
(``check_index_model``) and the CLI loads the recorded one by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.io import write_json
from .data.manifest import captioned_images

MODEL_RECORD = "model.json"


def model_record(segmenter) -> dict:
    """What ``model.json`` stores: how to load the model again and a hash of every weight that
    shapes its embeddings (adapter tensors included)."""
    from .adapters import state_dict_sha256

    source = segmenter.source
    return {
        "model": source.get("model") if source else None,
        "adapter": source.get("adapter") if source else None,
        "known": source is not None,  # False: a Segmenter built in code, not by vlseg.load
        "name": segmenter.name,
        "sha256": state_dict_sha256(segmenter.model, adapters=True),
    }


def read_model_record(index_dir) -> dict | None:
    """The ``model.json`` of an index directory (or of the parent of ``images/``), if any."""
    import json

    path = Path(index_dir)
    for d in (path, path.parent) if path.name in ("images", "texts") else (path,):
        if (d / MODEL_RECORD).is_file():
            return json.loads((d / MODEL_RECORD).read_text())
    return None


def check_index_model(segmenter, index_dir) -> None:
    """Refuse to query an index with embeddings of another model (they are not comparable).

    Indexes without ``model.json`` (built before it existed) are not checked.

    Raises:
        ValueError: the index was built by another model; names both and the two fixes.
    """
    rec = read_model_record(index_dir)
    if rec is None:
        return
    got = model_record(segmenter)
    if got["sha256"] != rec["sha256"]:
        how = rec["model"] or "the embedded default"
        if rec.get("adapter"):
            how += f" with adapter {rec['adapter']}"
        if not rec.get("known", True):
            how = "a model built in code"
        raise ValueError(
            f"index {index_dir} was built with model {rec['name']!r} ({how}; weights sha256 "
            f"{rec['sha256'][:12]}...), but the model given is {got['name']!r} (sha256 "
            f"{got['sha256'][:12]}...): its embeddings are not comparable. Query with the "
            "index's model (on the command line: leave --model out), or rebuild the index with "
            "this one: vlseg index build --model M --data D --out DIR"
        )


def _pairs(data, split) -> list[dict]:
    """Index metadata rows: one per captioned image."""
    return [
        {"image": str(r.image), "caption": r.caption, "label": r.label, "modality": r.modality}
        for r in captioned_images(data, split)
    ]


def embed_images(
    segmenter, paths: list[str], batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """L2-normalised image embeddings, N x E."""
    out = [
        segmenter.image_embedding(paths[i : i + batch_size])
        for i in tqdm(range(0, len(paths), batch_size), disable=not progress, desc="images")
    ]
    return np.concatenate(out).astype(np.float32)


def build_index(
    segmenter,
    data,
    out,
    *,
    split: str | None = None,
    kind: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """Embed a manifest's images and captions and save ``out/images`` and ``out/texts``."""
    from retrieval import Index

    rows = _pairs(data, split)
    img = embed_images(segmenter, [r["image"] for r in rows], batch_size, progress)
    captions = sorted({r["caption"] for r in rows})
    members = {c: [] for c in captions}
    for i, r in enumerate(rows):
        members[r["caption"]].append(i)
    txt = np.concatenate(
        [segmenter.text_embedding(captions[i : i + 256]) for i in range(0, len(captions), 256)]
    ).astype(np.float32)
    out = Path(out)
    Index.build(img, rows, kind=kind).save(out / "images")
    Index.build(txt, [{"caption": c, "images": members[c]} for c in captions], kind=kind).save(
        out / "texts"
    )
    write_json(out / MODEL_RECORD, model_record(segmenter))
    return out


def load_index(path: str | os.PathLike):
    """``(image_index, text_index)`` of an index directory."""
    from retrieval import Index

    path = Path(path)
    if not (path / "images").is_dir():
        raise FileNotFoundError(
            f"{path} is not a vlseg index (expected images/ and texts/); "
            "build one with: vlseg index build --data D --out DIR"
        )
    return Index.load(path / "images"), Index.load(path / "texts")


def eval_retrieval(segmenter, index_dir, *, ks=(1, 5, 10)) -> dict[str, dict[str, float]]:
    """Recall@k text->image (every image sharing the query caption counts as a hit) and
    image->text (the image's own caption is the one relevant row)."""
    from retrieval import retrieval_recall

    check_index_model(segmenter, index_dir)
    images, texts = load_index(index_dir)
    n_img, n_txt = images.ntotal, texts.ntotal
    img_meta = [images.metadata(i) for i in range(n_img)]
    txt_meta = [texts.metadata(i) for i in range(n_txt)]
    caption_row = {m["caption"]: i for i, m in enumerate(txt_meta)}
    txt_emb = np.concatenate(
        [
            segmenter.text_embedding([m["caption"] for m in txt_meta[i : i + 256]])
            for i in range(0, n_txt, 256)
        ]
    )
    t2i = retrieval_recall(images, txt_emb, [set(m["images"]) for m in txt_meta], ks=ks)
    img_emb = embed_images(segmenter, [m["image"] for m in img_meta], progress=False)
    i2t = retrieval_recall(texts, img_emb, [{caption_row[m["caption"]]} for m in img_meta], ks=ks)
    return {"text_to_image": t2i, "image_to_text": i2t, "n_images": n_img, "n_captions": n_txt}
