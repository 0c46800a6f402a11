"""Prompts typed as requests reach the model as the description inside them."""

import numpy as np
import pytest
import torch

from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config
from vlseg.requests import (
    model_text,
    plain_text,
    request_forms_of,
    split_request,
    strip_request,
)
from vlseg.vocabulary import unfamiliar


@pytest.mark.parametrize(
    "typed, description",
    [
        ("I need a mask of the backbone", "the backbone"),
        ("can you point out the hepatic nodule", "the hepatic nodule"),
        (
            "please contour the liver tumor within the left lobe",
            "the liver tumor within the left lobe",
        ),
        ("where is the hepatic nodule?", "the hepatic nodule"),
        ("Where are the kidneys located?", "the kidneys"),
        ("show me where the spleen is", "the spleen"),
        ("Could you please outline the left kidney for me?", "the left kidney"),
        ("delineate the focal liver lesion in this image", "the focal liver lesion"),
        ("segment the liver", "the liver"),
        ("is there a lesion?", "a lesion"),
        ("give me a mask of the aorta, thanks", "the aorta"),
        ("highlight the pen marking please", "the pen marking"),
        ("how big is the liver", "the liver"),
        ("what is the size of the liver?", "the liver"),
        ("how many hepatic lesions are there?", "hepatic lesions"),
    ],
)
def test_requests_become_descriptions(typed, description):
    assert strip_request(typed) == description


@pytest.mark.parametrize(
    "text",
    [
        "the hepatic lesion",
        "the largest hepatic lesion",
        "the lesion nearest the aorta",
        "the marker line",
        "mass in the left lobe",
        "both kidneys",
        "the lesion over there",
    ],
)
def test_descriptions_are_left_alone(text):
    assert strip_request(text) == text


def test_a_bare_request_is_kept():
    assert strip_request("segment") == "segment"
    assert strip_request("segment", keep=False) == ""


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    return Segmenter(build_model(cfg), image_size=cfg.image_size)


def test_segment_answers_the_description_and_keeps_the_text(seg):
    img = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    plain = seg.segment(img, "the liver")
    asked = seg.segment(img, "Could you outline the liver for me?")
    assert asked.text == "Could you outline the liver for me?"
    np.testing.assert_array_equal(asked.mask, plain.mask)
    assert asked.score == pytest.approx(plain.score)
    both = seg.segment(img, ["the liver", "can you show me the liver"])
    assert [r.text for r in both] == ["the liver", "can you show me the liver"]
    # the same prompt twice in one batch (rows may round differently on some CPUs)
    np.testing.assert_allclose(both[0].probs, both[1].probs, atol=1e-5)
    seg.strip_requests = False
    try:
        raw = seg.segment(img, "Could you outline the liver for me?")
        assert raw.text == "Could you outline the liver for me?"
        assert not np.array_equal(raw.probs, plain.probs)  # the whole sentence went in
    finally:
        seg.strip_requests = True


def test_trained_request_forms_reach_the_model_as_typed():
    forms = request_forms_of(["segment the liver", "the spleen", "show me the aorta please"])
    assert forms == {"leads": ["", "segment", "show me"], "tails": ["", "please"]}
    assert split_request("Could you outline the liver, please?") == (
        "could you outline",
        "the liver",
        "please",
    )
    assert model_text("Segment the kidneys", forms) == "Segment the kidneys"  # a known form
    assert model_text("show me the spleen please", forms) == "show me the spleen please"
    assert model_text("I need a mask of the spine", forms) == "the spine"  # an unseen form
    assert model_text("segment the liver for me", forms) == "the liver"  # unseen tail
    assert model_text("segment the liver", None) == "the liver"  # forms unknown
    assert request_forms_of(["outline the liver"], forms)["leads"] == [
        "",
        "outline",
        "segment",
        "show me",
    ]


def test_symbols_and_emoji_do_not_reach_the_model():
    forms = {"leads": [""], "tails": [""]}
    for typed in ["🫁 the liver 🫁", "the liver ✅", "the\x00liver", "the liver\u200d\ufe0f"]:
        assert plain_text(typed) == "the liver"
        assert model_text(typed, forms) == "the liver"
    assert plain_text("the left kidney (≥ 2 cm), please") == "the left kidney (≥ 2 cm), please"


def test_size_question_words_are_not_unfamiliar():
    vocab = frozenset({"liver", "hepatic", "lesion", "lesions"})
    assert unfamiliar("how big is the liver?", vocab) == []
    assert unfamiliar("what is the size of the liver", vocab) == []
    assert unfamiliar("how many hepatic lesions are there", vocab) == []
