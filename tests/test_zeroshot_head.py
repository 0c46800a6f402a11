"""A separate zero-shot head (`vlseg align target=zeroshot_head`): it trains alone, classify
uses it, retrieval and segmentation stay bit-identical."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlseg.adapters import state_dict_sha256
from vlseg.align import AlignConfig, align
from vlseg.checkpoint import load_checkpoint, save_checkpoint
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config


def test_tower_embedding_is_open_clips(timm_model_yaml):
    """The step-by-step timm path gives open_clip's own embedding, and the head's input."""
    torch.manual_seed(0)
    model = build_model(model_config(timm_model_yaml())).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.vision(x)
        ref = model.vision.visual.forward_intermediates(x, indices=model.vision._indices)
        assert torch.equal(ours["embedding"], ref["image_features"])
        assert torch.equal(model.vision.visual.head(ours["head_input"]), ours["embedding"])


def test_zeroshot_head_trains_alone_and_classify_uses_it(tiny_data, tmp_path, timm_model_yaml):
    torch.manual_seed(0)
    mcfg = model_config(timm_model_yaml())
    init = save_checkpoint(
        build_model(mcfg), mcfg, tmp_path / "init",
        extra={"vocabulary": "liver", "serving": {"threshold": 0.4}, "step": 7},
    )  # fmt: skip
    (init / "ood.safetensors").write_bytes(b"ood fit")
    cfg = AlignConfig(
        data=str(tiny_data), out=str(tmp_path / "run"), init=str(init), split="train",
        val_split="train", steps=8, batch_size=8, eval_every=4, encode_batch=4,
        paraphrases=6, hard_negatives=2, target="zeroshot_head",
    )  # fmt: skip
    out = align(cfg) / "best"
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert not (init / "zeroshot.safetensors").exists()
    # the model's weights file is untouched; the new head has a file of its own
    assert load_file(str(out / "model.safetensors")).keys() == before.keys()
    after |= load_file(str(out / "zeroshot.safetensors"))
    # every weight of init unchanged (the tower's head and the temperature included) ...
    assert set(before) < set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... and a new head, trained away from its starting copy of the tower's head
    added = sorted(set(after) - set(before))
    assert added and all(k.startswith("zeroshot_head.") for k in added)
    tower = {k.removeprefix("vision.visual.head."): v for k, v in before.items()
             if k.startswith("vision.visual.head.")}  # fmt: skip
    assert {k.removeprefix("zeroshot_head.") for k in added} == set(tower)
    assert any(not torch.equal(after[k], tower[k.removeprefix("zeroshot_head.")]) for k in added)
    assert (out / "ood.safetensors").read_bytes() == b"ood fit"

    model, loaded_cfg, meta = load_checkpoint(out)  # strict load: config says zeroshot_head
    assert loaded_cfg.zeroshot_head and meta["serving"] == {"threshold": 0.4}
    # init's whole record kept (its training step too); the alignment recorded beside it
    assert meta["step"] == 7 and meta["zeroshot_align"]["step"] in (4, 8)
    base, _, _ = load_checkpoint(init)
    # the zero-shot head does not count in the hash adapters and retrieval indexes check
    assert state_dict_sha256(model, adapters=True) == state_dict_sha256(base, adapters=True)

    seg, ref = Segmenter(model, image_size=64), Segmenter(base, image_size=64)
    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
              for i in range(3)]  # fmt: skip
    enc, enc_ref = seg.encode(images), ref.encode(images)
    # retrieval's embedding and the segmentation features: bit-identical to the base model
    assert np.array_equal(enc.embedding, enc_ref.embedding)
    assert all(
        torch.equal(a, b) for a, b in zip(enc.features.maps, enc_ref.features.maps, strict=True)
    )
    assert enc_ref.features.zeroshot is None
    assert np.array_equal(enc_ref.zeroshot_embedding, enc_ref.embedding)
    # zero-shot: the new head's embedding
    z = enc.zeroshot_embedding
    assert z.shape == enc.embedding.shape and not np.allclose(z, enc.embedding)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    labels = ["a liver", "a mole"]
    res = seg.classify(images, labels)
    expect = z @ seg.class_embeddings(labels).T
    assert [r.top for r in res] == [labels[i] for i in expect.argmax(1)]
    np.testing.assert_allclose([r.logits for r in res], 100.0 * expect, rtol=1e-4, atol=1e-3)
    # one image out of several keeps its row; volumes average the slices' zero-shot embeddings
    assert np.array_equal(enc[1].zeroshot_embedding[0], z[1])


def test_zeroshot_target_validation(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="target="):
        align(AlignConfig(data=str(tiny_data), out=str(tmp_path / "r"), model="tiny-test",
                          target="both"))  # fmt: skip
    with pytest.raises(ValueError, match="separate embedding head"):
        build_model(model_config("tiny-test")).add_zeroshot_head()


def test_finetuning_the_tower_drops_the_zeroshot_head(tiny_data, tmp_path, capsys, timm_model_yaml):
    from vlseg.config import TrainConfig
    from vlseg.engine import train

    mcfg = model_config(timm_model_yaml())
    model = build_model(mcfg)
    model.add_zeroshot_head()
    mcfg.zeroshot_head = True
    init = save_checkpoint(model, mcfg, tmp_path / "init")

    def run(name, **kw):
        cfg = TrainConfig(model="tiny-test", data=str(tiny_data), out=str(tmp_path / name),
                          init=str(init), epochs=1, batch_size=4, num_workers=0,
                          warmup_steps=1, val_limit=4, max_steps=1, **kw)  # fmt: skip
        return load_checkpoint(train(cfg) / "last")

    # the tower trains (the config's default): the head no longer matches it
    tuned, tuned_cfg, _ = run("ft")
    assert tuned.zeroshot_head is None and not tuned_cfg.zeroshot_head
    assert "zero-shot head no longer matches" in capsys.readouterr().out
    # only the decoder trains: the head still reads the same features and is kept
    kept, kept_cfg, _ = run("dec", train_only=["decoder."])
    assert kept.zeroshot_head is not None and kept_cfg.zeroshot_head
