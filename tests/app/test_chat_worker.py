"""The model worker: concurrent sessions' decoder calls batched, answers as the unbatched path's."""

import threading

import numpy as np
import pytest
import torch

from vlseg.chat import ChatService, ChatSession, ModelWorker, concat_encoded
from vlseg.chat.session import encode_image

TEXTS = {  # three sessions, each its own image and prompts (one asks two things at once)
    "ct": ["the liver", "both kidneys"],
    "derm": ["the skin lesion"],
    "ct2": ["the hepatic lesion"],
}


@pytest.fixture
def images(phantom_pngs, tmp_path):
    """Three images of different sizes (an answer on the wrong one has the wrong shape)."""
    from PIL import Image

    from vlseg.data.phantoms import generate_sample

    other = tmp_path / "ct2.png"
    Image.fromarray(generate_sample(seed=3, index=1, modality="ct", size=72).image).save(other)
    return {"ct": str(phantom_pngs["ct"]), "derm": str(phantom_pngs["derm"]), "ct2": str(other)}


def _batched(worker, encoded, texts, spacing=None):
    """Answers to requests submitted together from their own threads (one batch: the worker
    waits long enough for all of them)."""
    out, errors = {}, []
    start = threading.Barrier(len(encoded))

    def ask(key):
        try:
            start.wait()
            out[key] = worker.segment(encoded[key], texts[key], spacing=(spacing or {}).get(key))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(k,)) for k in encoded]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def _assert_same(got, want):
    assert [r.text for r in got] == [r.text for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.mask.shape == b.mask.shape
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.verdict == b.verdict
        # pixels may flip only where the probability sits at the threshold
        flipped = a.mask != b.mask
        assert not flipped.any() or np.abs(b.probs[flipped] - 0.5).max() < 1e-4
        assert a.area_mm2 == pytest.approx(b.area_mm2, rel=1e-3) if b.area_mm2 else True


def test_batched_answers_equal_direct_segment(tiny_seg, images):
    encoded = {k: tiny_seg.encode(p) for k, p in images.items()}
    spacing = {"ct": (0.8, 0.8)}  # one session stated a pixel spacing
    worker = ModelWorker(tiny_seg, wait_ms=500)
    try:
        got = _batched(worker, encoded, TEXTS, spacing)
        assert worker.batches == 1 and worker.requests == 3, "one decoder call for all three"
    finally:
        worker.close()
    for key, path in images.items():
        want = tiny_seg.segment(path, TEXTS[key], spacing=spacing.get(key))
        _assert_same(got[key], want)
    assert got["ct"][0].area_mm2 is not None and got["derm"][0].area_mm2 is None


def test_a_lone_request_is_the_library_call_itself(tiny_seg, images, monkeypatch):
    calls = []
    segment = tiny_seg.segment
    monkeypatch.setattr(tiny_seg, "segment", lambda *a, **k: calls.append(a[1]) or segment(*a, **k))
    worker = ModelWorker(tiny_seg, wait_ms=0)
    try:
        encoded = tiny_seg.encode(images["ct"])
        out = worker.segment(encoded, ["the liver"])
    finally:
        worker.close()
    assert calls == [["the liver"]] and worker.batches == 0
    _assert_same(out, segment(images["ct"], ["the liver"]))


def test_requests_the_batch_does_not_cover_go_to_segment(tiny_seg, images, volume_files):
    worker = ModelWorker(tiny_seg, wait_ms=0)
    try:
        volume = tiny_seg.encode(str(volume_files["ct.nii.gz"]))
        (res,) = worker.segment(volume, ["the liver"])  # a volume: answered in 3-D
        assert res.mask.ndim == 3
        encoded = tiny_seg.encode(images["ct"])
        # naming one instance: answered by segment's referring path
        (ref,) = worker.segment(encoded, ["the largest hepatic lesion"])
        (want,) = tiny_seg.segment(encoded, ["the largest hepatic lesion"])
        assert ref.text == want.text and np.array_equal(ref.mask, want.mask)
        with pytest.raises(ValueError):
            worker.segment(encoded, [""])  # segment's own error for an empty prompt
    finally:
        worker.close()
    assert worker.batches == 0


def test_a_failing_batch_answers_each_request_alone(tiny_seg, images, monkeypatch):
    encoded = {k: tiny_seg.encode(p) for k, p in images.items()}
    worker = ModelWorker(tiny_seg, wait_ms=500)
    monkeypatch.setattr(
        worker, "_decode_together", lambda reqs: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    try:
        got = _batched(worker, encoded, TEXTS)
    finally:
        worker.close()
    for key, path in images.items():
        _assert_same(got[key], tiny_seg.segment(path, TEXTS[key]))


def test_closed_worker_refuses(tiny_seg, images):
    worker = ModelWorker(tiny_seg)
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.segment(tiny_seg.encode(images["ct"]), ["the liver"])


def test_concat_encoded_keeps_rows_in_order(tiny_seg, images):
    parts = [tiny_seg.encode(p) for p in images.values()]
    both = concat_encoded(parts)
    assert len(both) == 3 and both.sizes == [p.sizes[0] for p in parts]
    for i, p in enumerate(parts):
        for a, b in zip(both.features.maps, p.features.maps, strict=True):
            assert torch.equal(a[i : i + 1], b)
        assert torch.equal(both.features.embedding[i], p.features.embedding[0])
        assert both[i].images[0] is p.images[0]
    assert concat_encoded(parts[:1]) is parts[0]
    with pytest.raises(ValueError):
        concat_encoded([])


def test_concurrent_chat_sessions_get_their_own_answers(eager_seg, images, tmp_path):
    """Three sessions talking at once through one service (one model worker): each answer is
    the one for that session's own image."""
    service = ChatService(eager_seg, workdir=tmp_path / "work", batch_wait_ms=200)
    sessions = {k: ChatSession() for k in images}
    try:
        for key, path in images.items():
            encode_image(eager_seg, sessions[key], path, max_pixels=10**7)
        results, errors = {}, []
        start = threading.Barrier(len(images))

        def talk(key):
            try:
                start.wait()
                for _ in range(3):
                    out = service.respond(sessions[key], " and ".join(TEXTS[key]))
                    results.setdefault(key, []).append(out.reply)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=talk, args=(k,)) for k in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert service.worker.batches >= 1, "some turns were batched together"
    finally:
        service.close()
    for key, path in images.items():
        for res, text in zip(eager_seg.segment(path, TEXTS[key]), TEXTS[key], strict=True):
            want = f"**{text}**: area {res.area_px:,} px"
            assert all(want in reply for reply in results[key]), (key, results[key])
