"""A text tower kept in bf16 (``Segmenter(text_dtype=...)``): answers within tolerance."""

import copy

import numpy as np
import pytest
import torch

from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config


def _img(seed=0):
    return (np.random.default_rng(seed).random((40, 48)) * 255).astype(np.uint8)


def test_bf16_text_tower_answers_within_tolerance():
    # Segmenter(text_dtype="bfloat16") keeps the text tower's weights in bf16 (half the bytes
    # read per new prompt); features reach the decoder as float32 and answers stay close.
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    fp32 = Segmenter(build_model(cfg), image_size=cfg.image_size)
    bf16 = Segmenter(copy.deepcopy(fp32.model), image_size=cfg.image_size, text_dtype="bf16")
    assert next(bf16.model.text.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.text.parameters()).dtype == torch.float32
    for text in ("the liver", "a hypodense lesion in the right lobe"):
        a, b = fp32.segment(_img(1), text), bf16.segment(_img(1), text)
        assert b.probs.dtype == a.probs.dtype
        assert np.abs(a.probs - b.probs).max() < 0.05 and abs(a.score - b.score) < 0.05
    with pytest.raises(ValueError, match="float32' or 'bfloat16"):
        Segmenter(build_model(cfg), image_size=cfg.image_size, text_dtype="float16")


def test_bf16_text_tower_refuses_a_prompt_learner():
    import torch.nn as nn

    cfg = model_config("tiny-test")
    model = build_model(cfg)
    model.prompter = nn.Module()  # any attached learner
    with pytest.raises(ValueError, match="prompt learner"):
        Segmenter(model, image_size=cfg.image_size, text_dtype="bfloat16")
