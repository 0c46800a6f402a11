"""The caption paraphrase generator (vlseg.paraphrase) and `vlseg align`'s paraphrase mode."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlseg.align import AlignConfig, align, multi_positive_clip_loss
from vlseg.checkpoint import load_checkpoint, save_checkpoint
from vlseg.data.manifest import read_manifest
from vlseg.paraphrase import (
    DERM_CLASSES,
    ImageFacts,
    Paraphraser,
    caption_pool,
    caption_pool_with_claims,
    fact_claims,
    image_facts,
)
from vlseg.registry import build_model, model_config

BENCH = Path(__file__).resolve().parents[1] / "bench" / "zeroshot_wording.py"

DERM = ImageFacts("dermoscopy", "melanoma", "dermoscopy image of a melanoma on dark skin with hair")
CT = ImageFacts(
    "ct",
    "hepatic lesion",
    "abdominal CT slice with two hypodense hepatic lesions in the right lobe of the liver",
    frozenset({"liver", "spleen", "kidney_right", "lesions", "lesion_largest", "lesions_hypodense",
               "lesions_right_lobe"}),
    frozenset({"kidney_left", "renal_cyst"}),
)  # fmt: skip
NORMAL_NO_LIVER = ImageFacts(
    "ct", "normal liver", "abdominal CT slice with a normal liver", frozenset({"kidney_right"}),
    frozenset({"liver", "spleen", "kidney_left"}),
)  # fmt: skip


def _bench():
    spec = importlib.util.spec_from_file_location("zeroshot_wording", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def test_paraphrases_are_deterministic_per_seed_and_many():
    for facts in (DERM, CT, NORMAL_NO_LIVER):
        a = Paraphraser(seed=3).captions(facts, 32, key="img_1")
        assert a == Paraphraser(seed=3).captions(facts, 32, key="img_1")
        assert len(a) == 32 and len({c.lower() for c in a}) == 32
        assert a != Paraphraser(seed=4).captions(facts, 32, key="img_1")
        assert a != Paraphraser(seed=3).captions(facts, 32, key="img_2")
    pool = caption_pool(CT, Paraphraser(0), 8, key="x")
    assert pool[0] == CT.caption and len(pool) == 9


def test_paraphrases_state_the_facts():
    derm = Paraphraser(0).captions(DERM, 64, key="k")
    others = [c for c in DERM_CLASSES if c != "melanoma"]
    assert not any(o in c.lower() for c in derm for o in others)
    no_liver = " ".join(Paraphraser(0).captions(NORMAL_NO_LIVER, 64, key="k")).lower()
    assert "normal liver" not in no_liver  # the slice shows no liver at all
    rng = np.random.default_rng(0)
    negs = [Paraphraser(0).contrast(DERM, rng) for _ in range(40)]
    assert all(n and "melanoma" not in n.lower() for n in negs)
    ct_negs = [Paraphraser(0).contrast(CT, rng) for _ in range(40)]
    assert all(ct_negs) and len(set(ct_negs)) > 20


def test_paraphrases_never_use_a_benchmark_wording(tiny_data):
    """bench/zeroshot_wording.py must stay unseen: no caption contains one of its labels (as
    words; the bare class names excepted, which every caption of that class must use)."""
    wordings = _bench().all_wordings()
    assert len(wordings) > 100
    facts = list(image_facts(read_manifest(tiny_data)).values())
    facts += [DERM, CT, NORMAL_NO_LIVER]
    facts += [ImageFacts("dermoscopy", c, f"dermoscopy image of a {c} on light skin with hair",
                         frozenset({"ink"})) for c in DERM_CLASSES]  # fmt: skip
    para = Paraphraser(0)
    texts = set()
    for i, f in enumerate(facts):
        texts.update(para.captions(f, 200, key=f"img{i}"))
        rng = np.random.default_rng(i)
        texts.update(c for c in (para.contrast(f, rng) for _ in range(50)) if c)
    texts = [_norm(t) for t in texts]
    assert len(texts) > 1500
    exempt = {_norm(c) for c in DERM_CLASSES}
    for w in wordings:
        nw = _norm(w)
        if nw in exempt:
            continue
        bad = [t for t in texts if (nw in t if len(nw.split()) > 1 else nw == t)]
        assert not bad, f"bench wording {w!r} in generated captions, e.g. {bad[:3]}"


def test_caption_claims_hold_for_their_image_and_mark_other_true_images(tiny_data):
    facts = list(image_facts(read_manifest(tiny_data)).values()) + [DERM, CT, NORMAL_NO_LIVER]
    para = Paraphraser(0)
    for i, f in enumerate(facts):
        pool = caption_pool_with_claims(f, para, 40, key=f"img{i}")
        assert [c for c, _ in pool] == caption_pool(f, para, 40, key=f"img{i}")
        assert all(claims and claims <= fact_claims(f) for _, claims in pool)
    nevus = ImageFacts("dermoscopy", "nevus", "dermoscopy image of a nevus on light skin")
    derm = para.captions_with_claims(DERM, 64, key="k")
    for cap, claims in derm:  # only a caption naming just the modality is true of a nevus
        assert (claims <= fact_claims(nevus)) == (claims == {("modality", "dermoscopy")}), cap
    assert any(c == {("modality", "dermoscopy")} for _, c in derm)
    other_ct = ImageFacts(
        "ct",
        "hepatic lesion",
        "abdominal CT slice with one hypodense hepatic lesion in the left lobe of the liver",
        frozenset({"liver", "spleen"}),
    )
    ct = para.captions_with_claims(CT, 64, key="k")
    true_of_other = {c for c, claims in ct if claims <= fact_claims(other_ct)}
    assert true_of_other and all("right" not in c and "two" not in c for c in true_of_other)
    # the slice without a liver: nothing about a normal liver holds for it
    assert not any(claims <= fact_claims(NORMAL_NO_LIVER) for _, claims in ct
                   if ("label", "hepatic lesion") in claims)  # fmt: skip
    assert ("label", "normal liver") not in fact_claims(NORMAL_NO_LIVER)


def test_fact_positives_mark_every_image_a_drawn_text_is_true_of():
    from vlseg.align import _fact_positives

    # claims: 0 = CT, 1 = dermoscopy, 2 = melanoma, 3 = nevus; images: CT, melanoma, nevus
    truth = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    # texts: "CT image", "dermoscopy image", "melanoma on dermoscopy", a text with no claims
    text_claims = torch.tensor([[0, -1], [1, -1], [1, 2], [-2, -1]])
    tr = {"truth": truth, "text_claims": text_claims}
    idx, text_id = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 1, 3])
    got = _fact_positives(tr, idx, text_id)
    want = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(got, want)
    assert not _fact_positives(tr, idx, torch.tensor([-1, -1, -1, -1])).any()  # averaged texts


def test_multi_positive_loss_matches_clip_loss_without_extras():
    from vlseg.losses import clip_loss

    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    groups = torch.tensor([0, 1, 0, 2, 3, 1])
    scale = torch.tensor(2.0)
    same = groups[:, None] == groups[None, :]
    ref = clip_loss(img, txt, scale, groups=groups)
    assert torch.allclose(multi_positive_clip_loss(img, txt, scale, same), ref)
    neg = torch.full((6, 8), float("nan"))
    assert torch.allclose(multi_positive_clip_loss(img, txt, scale, same, neg), ref)
    neg[0] = img[0]  # a hard negative equal to the image raises the loss
    assert multi_positive_clip_loss(img, txt, scale, same, neg) > ref


def test_align_with_paraphrases_trains_the_head_only(tiny_data, tmp_path, timm_model_yaml):
    torch.manual_seed(0)
    cfg_yaml = timm_model_yaml("avg", "linear")
    mcfg = model_config(cfg_yaml)
    init = save_checkpoint(
        build_model(mcfg), mcfg, tmp_path / "init",
        extra={"vocabulary": "liver", "serving": {"threshold": 0.4}},
    )  # fmt: skip
    (init / "ood.safetensors").write_bytes(b"ood fit")  # copied as is
    cfg = AlignConfig(
        data=str(tiny_data), out=str(tmp_path / "run"), init=str(init), split="train",
        val_split="train", steps=8, batch_size=8, eval_every=4, encode_batch=4,
        paraphrases=6, hard_negatives=2, paraphrase_average=1,
    )  # fmt: skip
    out = align(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]
    assert all(np.isfinite(r["loss"]) and 0 <= r["zero_shot_mean"] <= 1 for r in rows)
    assert "zero_shot_modality" in rows[-1] and "zero_shot_dermoscopy" in rows[-1]
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(out / "best" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.startswith("vision.visual.head.") or k == "logit_scale" for k in changed
    )
    _, _, meta = load_checkpoint(out / "best")
    assert meta["serving"] == {"threshold": 0.4} and meta["vocabulary"] == "liver"
    assert (out / "best" / "ood.safetensors").read_bytes() == b"ood fit"
    # averaging several paraphrases per step runs too
    cfg.paraphrase_average, cfg.hard_negatives, cfg.steps = 3, 0, 2
    cfg.out, cfg.eval_every = str(tmp_path / "run2"), 2
    assert (align(cfg) / "best" / "model.safetensors").is_file()


def test_align_rejects_hard_negatives_without_paraphrases(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="hard_negatives needs paraphrases"):
        align(AlignConfig(data=str(tiny_data), out=str(tmp_path / "r"), model="tiny-test",
                          hard_negatives=2))  # fmt: skip


def test_caption_cache_embeds_each_text_once(tmp_path, monkeypatch):
    import vlseg.align as A

    model = build_model(model_config("tiny-test")).eval()
    cache = str(tmp_path / "cache.safetensors")
    first = A._cached_caption_embeddings(model, ["a liver", "a mole"], "cpu", cache)
    asked = []
    real = A._caption_embeddings

    def counting(m, texts, device, progress=False):
        asked.append(list(texts))
        return real(m, texts, device, progress)

    monkeypatch.setattr(A, "_caption_embeddings", counting)
    again = A._cached_caption_embeddings(model, ["a mole", "a liver", "a spleen"], "cpu", cache)
    assert asked == [["a spleen"]]
    assert torch.allclose(again[:2], first[[1, 0]])
    with torch.no_grad():  # another text tower: the cache does not apply
        next(model.text.parameters()).add_(1.0)
    A._cached_caption_embeddings(model, ["a mole"], "cpu", cache)
    assert asked[-1] == ["a mole"]
