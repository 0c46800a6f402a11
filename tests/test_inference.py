"""The inference core: encode/decode/postprocess shared by the API, evaluation, CLI and chat;
serving settings that travel with a checkpoint; untrained variants refuse to load."""

import numpy as np
import pytest
import torch
import yaml

import vlseg
from vlseg.checkpoint import save_checkpoint
from vlseg.data.manifest import ManifestDataset
from vlseg.evaluation import evaluate
from vlseg.inference import EncodedImage, decode, postprocess
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, list_models, model_config
from vlseg.serving import ServingConfig


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    return Segmenter(build_model(cfg), image_size=cfg.image_size)


def _img(h=80, w=96, seed=0):
    return (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)


def test_encode_does_not_touch_the_cache_and_answers_equal_segment(seg):
    seg.reset_image()
    calls = seg.encoder_calls
    encoded = seg.encode(_img())
    assert isinstance(encoded, EncodedImage) and len(encoded) == 1 and not seg.has_image
    texts = ["the liver", "the spleen"]
    via_core = seg.postprocess(seg.decode(encoded, texts), encoded)
    via_encoded = seg.segment(encoded, texts)
    assert seg.encoder_calls == calls + 1, "answers from an EncodedImage never re-encode"
    via_path = seg.segment(_img(), texts)
    for a, b, c in zip(via_core, via_encoded, via_path, strict=True):
        # the same computation on the same tensors: bit-identical
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.probs, c.probs)
        assert a.score == b.score == c.score and a.verdict == c.verdict


def test_several_images_in_one_encoded_batch(seg):
    encoded = seg.encode([_img(64, 64, 1), _img(70, 50, 2)])
    out = seg.segment(encoded, ["the liver", "the spleen"])
    assert len(out) == 2 and out[1][0].mask.shape == (70, 50)
    single = seg.segment(encoded[1], "the spleen")
    # batch of 4 pairs vs 1 pair: the convolutions may take other kernels (fp32 rounding of
    # sums over <= a few hundred terms of magnitude ~1, i.e. ~1e-5 at most)
    np.testing.assert_allclose(single.probs, out[1][1].probs, atol=1e-4)


def test_decode_checks_image_rows(seg):
    encoded = seg.encode([_img(seed=1), _img(seed=2)])
    with pytest.raises(ValueError, match="image_index"):
        decode(seg.model, encoded, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one row in"):
        decode(seg.model, encoded, ["a"], [5])


def test_postprocess_threshold_and_calibration(seg):
    encoded = seg.encode(_img())
    decoded = seg.decode(encoded, ["the liver"])
    z = float(decoded.presence[0])
    plain = postprocess(decoded, encoded, ServingConfig())[0]
    assert plain.score == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-6)
    hot = ServingConfig(calibration={"method": "temperature", "temperature": 4.0})
    cooled = postprocess(decoded, encoded, hot)[0]
    assert cooled.score == pytest.approx(1 / (1 + np.exp(-z / 4)), rel=1e-6)
    # presence is score >= threshold: a threshold just at the score keeps it present
    at = ServingConfig(threshold=plain.score)
    assert postprocess(decoded, encoded, at)[0].score >= at.threshold
    never = postprocess(decoded, encoded, ServingConfig(threshold=1.0))[0]
    assert never.verdict == "absent" and not never.present and never.area_px == 0
    everything = postprocess(decoded, encoded, ServingConfig(threshold=0.0))
    assert everything[0].present and everything[0].area_px == 80 * 96


def test_serving_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        ServingConfig(threshold=1.5)
    with pytest.raises(ValueError, match="method must be one of"):
        ServingConfig(calibration={"method": "isotonic"})
    with pytest.raises(ValueError, match="width > 0"):
        ServingConfig(window=(40, -1))
    with pytest.raises(ValueError, match="unknown keys"):
        ServingConfig.from_dict({"treshold": 0.4})


def test_serving_settings_travel_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    serving = ServingConfig(
        threshold=0.4,
        calibration={"method": "platt", "a": 0.5, "b": -0.2},
        window=(50, 350),
        labels=["melanoma", "nevus"],
        templates="dermoscopy",
    )
    save_checkpoint(build_model(cfg), cfg, tmp_path / "ck", extra={"serving": serving.to_dict()})
    loaded = vlseg.load(tmp_path / "ck")
    assert loaded.serving == serving and loaded.threshold == 0.4
    assert vlseg.load(tmp_path / "ck", threshold=0.7).threshold == 0.7
    res = loaded.classify(_img(), labels=None)  # the checkpoint's default labels
    assert res.labels == ["melanoma", "nevus"]
    # an unknown key in the checkpoint's serving section is an error naming it
    meta = yaml.safe_load((tmp_path / "ck" / "config.yaml").read_text())
    meta["serving"]["tresh"] = 1
    (tmp_path / "ck" / "config.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match="tresh"):
        vlseg.load(tmp_path / "ck")


def test_shipped_default_records_how_it_is_served():
    seg = vlseg.load()
    assert seg.serving.window == (45.0, 400.0) and seg.threshold == 0.5
    assert "hepatic lesion" in seg.serving.labels and "melanoma" in seg.serving.labels
    assert set(seg.serving.label_sets) == {"ct", "dermoscopy"}


def test_untrained_variant_refuses_to_load_unless_asked():
    untrained = [n for n in list_models() if n != "phantom-tiny"]
    assert "tiny-test" in untrained
    with pytest.raises(ValueError, match="no trained vlseg weights.*allow_untrained=True"):
        vlseg.load("tiny-test")
    seg = vlseg.load("tiny-test", allow_untrained=True)
    assert seg.segment(_img(), "the liver").mask.shape == (80, 96)


def test_evaluate_scores_what_segment_answers(tiny_data):
    """evaluate() at the original resolution predicts exactly Segmenter.segment's masks."""
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(build_model(cfg), image_size=cfg.image_size, threshold=0.45)
    vis = seg.model.vision
    ds = ManifestDataset(
        tiny_data, "test", image_size=cfg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    seen = []
    evaluate(
        seg.model,
        ds,
        batch_size=3,
        limit=6,
        serving=seg.serving,
        on_item=lambda rec, res, target, positive: seen.append((rec, res)),
        strip_requests=seg.strip_requests,
        requests=seg.requests,
    )
    assert len(seen) == 6
    for rec, res in seen:
        mine = seg.segment(str(rec.image), res.text)
        # dataset and API resize the image by the same transform: same decisions; allow a
        # few boundary pixels for fp32 differences between batched and single calls
        assert (mine.mask != res.mask).mean() <= 0.002
        assert mine.score == pytest.approx(res.score, abs=1e-4)


def test_segmenter_feeds_its_window_to_ct_files_and_keeps_the_files_for_display(tmp_path):
    nib = pytest.importorskip("nibabel")
    hu = np.linspace(-200, 300, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(
        build_model(cfg), image_size=cfg.image_size, serving=ServingConfig(window=(0, 100))
    )
    loaded = seg.encode(tmp_path / "ct.nii.gz").images[0]
    assert loaded.meta["window"] == (0.0, 100.0)
    gray = loaded.rgb[..., 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255  # -50..50 HU spans the model's window
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(_img()).save(png)
    assert seg.encode(png).images[0].meta.get("window") is None  # 8-bit images as they are


def test_text_cache_answers_repeated_prompts_without_the_text_tower():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(build_model(cfg), image_size=cfg.image_size)
    calls = []
    handle = seg.model.text.register_forward_hook(lambda *a: calls.append(1))
    try:
        encoded = seg.encode(_img())
        first = seg.segment(encoded, ["the liver", "both kidneys"])
        assert len(calls) == 1 and len(seg.text_cache) == 2
        again = seg.segment(encoded, ["both kidneys", "the liver", "the liver"])
        assert len(calls) == 1, "every prompt came from the cache"
        seg.segment(encoded, ["the spleen", "the liver"])
        assert len(calls) == 2 and seg.text_cache.hits == 4
    finally:
        handle.remove()
    # a cached prompt is re-padded to another batch length: equal up to fp32 rounding of the
    # attention over a few tokens (~1e-6); decisions identical
    np.testing.assert_allclose(again[1].probs, first[0].probs, atol=1e-5)
    np.testing.assert_array_equal(again[0].mask, first[1].mask)
    fresh = decode(seg.model, encoded, ["the liver"])  # no cache
    np.testing.assert_allclose(
        torch.sigmoid(fresh.presence).numpy(), [first[0].score], rtol=1e-5, atol=1e-6
    )


def test_text_cache_is_safe_under_concurrent_eviction():
    import threading

    from vlseg.inference import TextCache

    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    model = build_model(cfg).eval()
    cache = TextCache(size=2)  # every call evicts what another thread is about to use
    errors = []

    def work(words):
        try:
            for i in range(15):
                feats = cache.features(model, [words[i % 3], words[(i + 1) % 3], words[0]])
                assert feats.words.shape[0] == 3
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(["the liver", "the spleen", "the aorta"],)),
        threading.Thread(target=work, args=(["a cyst", "the spine", "both kidneys"],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 2


def test_encoded_image_index_is_checked():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(build_model(cfg), image_size=cfg.image_size)
    enc = seg.encode([_img(seed=1), _img(seed=2)])
    assert enc[-1].sizes == enc[1].sizes
    with pytest.raises(IndexError, match="image 2 of an EncodedImage of 2"):
        enc[2]
