"""Chat turns with the tiny random model: segment, cache reuse, intents, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlseg.chat import (
    MAX_MESSAGE_CHARS,
    ChatService,
    ChatSession,
    classify_cached,
    segment_cached,
)
from vlseg.chat.session import image_embedding
from vlseg.data.io import load_mask


@pytest.fixture
def service(eager_seg, tmp_path):
    svc = ChatService(eager_seg, workdir=tmp_path / "work")
    yield svc
    svc.close()


def _encoder_runs(seg):
    calls = []
    handle = seg.model.vision.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_segment_turn_reports_area_components_and_writes_mask(service, phantom_pngs):
    session = ChatSession()
    out = service.respond(session, "segment the hepatic lesion", [str(phantom_pngs["ct"])])
    assert "**the hepatic lesion**: area" in out.reply and " px" in out.reply
    assert "connected component" in out.reply and "presence" in out.reply
    assert "mm²" not in out.reply.split("\n")[0]  # PNG: spacing unknown
    assert "spacing is unknown" in out.reply
    assert out.view_changed and out.overlay is not None and out.overlay.ndim == 3
    assert min(out.overlay.shape[:2]) >= 256  # a 96 px image is enlarged for display
    assert len(out.files) == 1
    mask = load_mask(out.files[0])
    assert mask.shape == (80, 96)  # original resolution
    assert mask.sum() == session.results[0].area_px
    assert [m.shape for m, _ in out.annotations] == [out.base.shape[:2]]
    assert session.history[0]["role"] == "user" and session.history[-1]["role"] == "assistant"
    assert {"path": out.overlay_path} in session.history[-1]["content"]


def test_follow_ups_reuse_the_session_cache(service, phantom_pngs):
    seg = service.segmenter
    session = ChatSession()
    calls, handle = _encoder_runs(seg)
    try:
        service.respond(session, "", [str(phantom_pngs["ct"])])
        assert seg.encoder_calls == 1 and len(calls) == 1
        for text in ["the liver", "the spleen and both kidneys", "what is this?", "help"]:
            service.respond(session, text)
    finally:
        handle.remove()
    assert seg.encoder_calls == 1 and len(calls) == 1, "follow-ups must not re-encode the image"
    assert not seg.has_image, "the shared Segmenter's own cache stays unused"


def test_chat_answer_equals_segmenter_segment(service, phantom_pngs):
    session = ChatSession()
    service.respond(session, "the liver", [str(phantom_pngs["ct"])])
    ours = segment_cached(service.segmenter, session, ["the liver"])[0]
    reference = service.segmenter.segment(str(phantom_pngs["ct"]), "the liver")
    # same features, prompt and kernels: bit-identical on every ISA/thread count measured
    np.testing.assert_allclose(ours.probs, reference.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(session.results[0].mask, reference.mask)


def test_sessions_do_not_share_images(service, phantom_pngs):
    a, b = ChatSession(), ChatSession()
    service.respond(a, "", [str(phantom_pngs["ct"])])
    service.respond(b, "", [str(phantom_pngs["derm"])])
    ra = segment_cached(service.segmenter, a, ["the liver"])[0]
    rb = segment_cached(service.segmenter, b, ["the liver"])[0]
    assert ra.mask.shape == (80, 96) and rb.mask.shape == (64, 64)
    assert image_embedding(a).shape == image_embedding(b).shape
    assert not np.allclose(image_embedding(a), image_embedding(b))


def test_several_targets_one_mask_each_and_mm2_with_spacing(service, phantom_pngs):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "show me the liver, the spleen and both kidneys, spacing 0.5 mm")
    assert [r.text for r in session.results] == ["the liver", "the spleen", "both kidneys"]
    assert out.reply.count("- **") == 3
    assert "mm²" in out.reply and "0.5 × 0.5 mm" in out.reply
    r = session.results[0]
    assert r.area_mm2 == pytest.approx(r.area_px * 0.25)
    assert len(out.files) == 3 and len(out.colors) == 3
    assert len(set(out.colors.values())) == 3


def test_not_found_reply(tiny_seg, phantom_pngs, tmp_path):
    tiny_seg.threshold = 1.0  # nothing can be present (presence is a sigmoid < 1)
    service = ChatService(tiny_seg, workdir=tmp_path)
    session = ChatSession()
    out = service.respond(session, "the renal cyst", [str(phantom_pngs["ct"])])
    assert "**the renal cyst**: not found (presence 0." in out.reply
    assert not load_mask(out.files[0]).any()


def test_classify_intents(service, phantom_pngs):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["derm"])])
    out = service.respond(session, "is it a melanoma or a nevus?")
    assert "Most likely: **" in out.reply and ("melanoma" in out.reply and "nevus" in out.reply)
    assert not out.view_changed
    out = service.respond(session, "what is this?")
    assert "Most likely" in out.reply and "hepatic lesion" in out.reply  # default labels


def test_classify_equals_segmenter_classify_without_encoding(service, phantom_pngs):
    seg = service.segmenter
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["derm"])])
    labels = ["melanoma", "nevus", "dermatofibroma"]
    ours = classify_cached(seg, session, labels)
    assert seg.encoder_calls == 1
    reference = seg.classify(str(phantom_pngs["derm"]), labels)
    assert ours.labels == labels and ours.top == reference.top
    # the cached image embedding vs a fresh encoding: bit-identical when measured (any ISA/threads)
    np.testing.assert_allclose(ours.probs, reference.probs, rtol=1e-4, atol=1e-6)


def test_similar_without_and_with_index(service, phantom_pngs, tmp_path):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    assert "No case index is loaded" in service.respond(session, "find similar cases").reply

    class FakeIndex:
        def __init__(self):
            self.queries = []

        def search_meta(self, vectors, k):
            self.queries.append((np.asarray(vectors), k))
            hits = [
                {"image": str(phantom_pngs["derm"]), "caption": "a nevus", "score": 0.91},
                {"image": "/nonexistent.png", "caption": "a *bold* case", "score": 0.5},
            ]
            return [hits[:k]]

    index = FakeIndex()
    service.index = index
    calls_before = service.segmenter.encoder_calls
    out = service.respond(session, "find 2 similar cases")
    vectors, k = index.queries[0]
    assert k == 2 and vectors.shape == (1, 32)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert "1. a nevus (similarity 0.910)" in out.reply and "a \\*bold\\* case" in out.reply
    assert len(out.attachments) == 1  # the missing image is skipped, not an error
    assert service.segmenter.encoder_calls == calls_before

    class BrokenIndex:
        def search_meta(self, vectors, k):
            raise ValueError("queries have dimension 32, the index 512")

    service.index = BrokenIndex()
    out = service.respond(session, "similar cases")
    assert "could not be searched" in out.reply and "512" in out.reply


def test_help_works_without_an_image(service):
    out = service.respond(ChatSession(), "help")
    assert "Upload an image" in out.reply and "Research use only" in out.reply


@pytest.mark.parametrize(
    "text, expected",
    [
        ("segment the liver", "upload an image first"),
        ("", "upload an image first"),
        ("   \n\x00 ", "upload an image first"),
        ("x" * 10_000, f"I read up to {MAX_MESSAGE_CHARS:,}"),
    ],
)
def test_messages_before_any_image(service, text, expected):
    out = service.respond(ChatSession(), text)
    assert expected.lower() in out.reply.lower()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "What should I segment"),
        ("  segment  ", "What should I segment"),
        ("x" * 10_000, f"I read up to {MAX_MESSAGE_CHARS:,}"),
    ],
)
def test_messages_without_a_usable_request(service, phantom_pngs, text, expected):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, text)
    assert expected.lower() in out.reply.lower()
    assert "area" in service.respond(session, "the liver").reply


@pytest.mark.parametrize("kind", ["notes", "truncated", "empty", "bomb", "missing", "directory"])
def test_bad_uploads_get_a_friendly_reply_and_the_session_recovers(
    service, phantom_pngs, bad_files, kind
):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    path = {
        "missing": str(bad_files["notes"].parent / "gone.png"),
        "directory": str(bad_files["notes"].parent),
    }.get(kind) or str(bad_files[kind])
    out = service.respond(session, "segment the liver", [path])
    assert out.reply.startswith("I could not use **")
    assert "I kept the previous image (ct.png)" in out.reply
    assert str(bad_files["notes"].parent) not in out.reply, "no server paths in replies"
    if kind == "bomb":
        assert "too large" in out.reply or "pixels" in out.reply
    good = service.respond(session, "the liver")
    assert "**the liver**: area" in good.reply
    fresh = ChatSession()
    assert "could not use" in service.respond(fresh, "", [path]).reply
    assert "upload an image first" in service.respond(fresh, "the liver").reply


def test_unexpected_errors_become_a_reply(service, phantom_pngs, monkeypatch):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(service.segmenter, "decode", boom)
    out = service.respond(session, "the liver")
    assert "something went wrong" in out.reply and "RuntimeError" in out.reply
    monkeypatch.undo()
    assert "area" in service.respond(session, "the liver").reply


def test_other_upload_forms(service, tmp_path):
    img = np.zeros((50, 70, 4), np.uint8)
    img[10:30, 10:40] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(img).save(path)
    session = ChatSession()
    out = service.respond(session, "the liver", [{"path": str(path), "orig_name": "scan.png"}])
    assert "area" in out.reply and session.image_name == "scan.png"
    out = service.respond(session, "", [str(path), str(path)])
    assert "one image at a time" in out.reply


def test_markdown_in_targets_is_escaped(service, phantom_pngs):
    session = ChatSession()
    out = service.respond(session, "segment <b>x</b>", [str(phantom_pngs["ct"])])
    assert "<b>" not in out.reply and "\\<b\\>" in out.reply


def test_session_close_removes_files(service, phantom_pngs):
    session = ChatSession()
    out = service.respond(session, "the liver", [str(phantom_pngs["ct"])])
    assert all(p for p in out.files)
    session.close()
    assert session.directory is None and not session.has_image
    from pathlib import Path

    assert not Path(out.files[0]).exists()


def test_segment_once_is_stateless(service, phantom_pngs):
    out = service.segment_once(str(phantom_pngs["ct"]), "the liver")
    assert "area" in out.reply and out.overlay is not None and len(out.files) == 1
    assert "upload an image first" in service.segment_once(None, "the liver").reply
    with torch.no_grad():
        assert service.segmenter.encoder_calls == 1


def test_similar_with_a_real_retrieval_index(service, phantom_pngs, tmp_path):
    pytest.importorskip("faiss")
    from retrieval import Index
    from vlseg.chat import load_index

    seg = service.segmenter
    paths = [phantom_pngs["ct"], phantom_pngs["derm"]]
    emb = np.stack([seg.image_embedding(str(p)) for p in paths])  # (2, E)
    meta = [{"image": str(p), "caption": f"case {p.stem}"} for p in paths]
    Index.build(emb, meta).save(tmp_path / "index")
    service.index = load_index(tmp_path / "index")  # what `--index DIR` does
    # the directory `vlseg index build --out DIR` writes (images/ + texts/) serves its images/
    Index.build(emb, meta).save(tmp_path / "built" / "images")
    assert load_index(tmp_path / "built").ntotal == 2
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "find similar cases")
    assert "1. case ct (similarity 1.000)" in out.reply and "2. case derm" in out.reply
    assert len(out.attachments) == 2


@pytest.mark.parametrize("text", ["the hepar", "where is the lien?"])
def test_unknown_word_in_a_chat_reply(text, eager_seg, tmp_path, phantom_pngs):
    from vlseg.predictor import Segmenter

    seg = Segmenter(eager_seg.model, image_size=eager_seg.image_size, vocabulary=["liver"])
    service = ChatService(seg, workdir=tmp_path / "work")
    try:
        out = service.respond(ChatSession(), text, [str(phantom_pngs["ct"])])
        word = text.split()[-1].strip("?")
        assert f"not trained on the word *{word}*" in out.reply and "rephrase" in out.reply
        out = service.respond(ChatSession(), "the liver", [str(phantom_pngs["ct"])])
        assert "not trained on" not in out.reply
    finally:
        service.close()


def test_what_is_this_without_default_labels_asks_for_labels(tiny_seg, phantom_pngs, tmp_path):
    service = ChatService(tiny_seg, workdir=tmp_path)  # a model that records no labels
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["derm"])])
    out = service.respond(session, "what is this?")
    assert "no default labels" in out.reply and "Name at least two" in out.reply


def test_a_stated_spacing_measures_the_last_answer_again(service, phantom_pngs):
    session = ChatSession()
    service.respond(session, "the liver", [str(phantom_pngs["ct"])])
    px = session.results[0].area_px
    assert session.results[0].area_mm2 is None  # a PNG: no spacing
    out = service.respond(session, "spacing 0.5 mm, how big is the liver in cm?")
    assert "0.5 × 0.5 mm" in out.reply
    assert session.results[0].area_mm2 == pytest.approx(px * 0.25)
    assert service.segmenter.encoder_calls == 1
    if session.results[0].present:
        assert f"{px * 0.25 / 100:,.2f} cm²" in out.reply


def test_editing_the_drawing_keeps_the_image(service, phantom_pngs):
    session = ChatSession()
    service.respond(session, "the liver", [str(phantom_pngs["ct"])])
    for text in ["undo", "remove that", "hide the liver"]:
        out = service.respond(session, text)
        assert "start over" in out.reply and session.has_image
    assert "not one of them" not in service.respond(session, "go to slice 3").reply
    assert "single 2-D image" in service.respond(session, "go to slice 3").reply


def test_a_bare_finding_noun_not_found_gets_a_hint():
    from vlseg.chat.replies import vague_note
    from vlseg.predictor import SegmentationResult

    def res(text, verdict):
        z = np.zeros((2, 2), bool)
        return SegmentationResult(text, z, z.astype(np.float32), 0.3, verdict, 0, None, 0)

    assert "the hepatic lesion" in vague_note([res("a lesion", "unsure")])
    assert vague_note([res("lesions", "absent")]) is not None
    assert vague_note([res("the lesion", "present")]) is None
    assert vague_note([res("the hepatic lesion", "absent")]) is None
    assert vague_note([res("a lesion", "out-of-domain")]) is None  # the caution says why


def test_unsure_for_an_unknown_word_says_why():
    from vlseg.chat.replies import describe
    from vlseg.predictor import SegmentationResult

    z = np.ones((2, 2), bool)
    r = SegmentationResult("all organs", z, z.astype(np.float32), 1.0, "unsure", 4, None, 1,
                           unfamiliar=["organs"])  # fmt: skip
    line = describe(r)
    assert "not trained on *organs*" in line and "unsure whether" not in line
    r.unfamiliar = []
    assert "unsure whether it is there (presence 1.00)" in describe(r)


def test_one_asked_label_is_weighed_against_its_own_label_set(service):
    serving = service.segmenter.serving
    old = serving.label_sets
    serving.label_sets = {
        "ct": {"labels": "phantom-ct"},
        "dermoscopy": {"labels": "phantom-dermoscopy"},
    }
    try:
        rivals = service._rivals("Melanoma")
        assert "nevus" in rivals and "normal liver" not in rivals
        assert service._rivals("a cat") == list(service.labels)  # in no set: the defaults
    finally:
        serving.label_sets = old


def test_loader_errors_read_without_python_class_names():
    from vlseg.chat.replies import readable_error

    exc = OSError("cannot read x.png (UnidentifiedImageError: cannot identify image file)")
    assert readable_error(exc, None, "x.png") == "cannot read x.png (cannot identify image file)"
