"""Volumes in the chat: a NIfTI or a zipped DICOM series in, 3-D measurements, a slice view and a
NIfTI mask out; bad volumes get a reply and the session keeps working (tiny random model)."""

from pathlib import Path

import numpy as np
import pytest

from vlseg.chat import ChatService, ChatSession, render
from vlseg.chat.intents import measure_question
from vlseg.volume import VolumeResult

nib = pytest.importorskip("nibabel")

N_SLICES, SIZE = 6, 64  # as the volume_files fixture (conftest.py) writes them


@pytest.fixture
def service(eager_seg, tmp_path):
    svc = ChatService(eager_seg, workdir=tmp_path / "work")
    yield svc
    svc.close()


def _runs(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_volume_prompt_measures_in_3d_and_the_encoder_runs_once(service, volume_files):
    seg = service.segmenter
    session = ChatSession()
    progress = []
    encoder, handle = _runs(seg.model.vision)
    try:
        out = service.respond(
            session,
            "segment the hepatic lesion",
            [str(volume_files["ct.nii.gz"])],
            progress=lambda done, total: progress.append((done, total)),
        )
        second = service.respond(session, "the liver and both kidneys")
    finally:
        handle.remove()
    assert progress[0] == (0, N_SLICES) and progress[-1] == (N_SLICES, N_SLICES)
    assert seg.encoder_calls == 1 and len(encoder) == 1, "one batch, one encoder run, 2 prompts"
    assert not seg.has_image, "the shared Segmenter's own cache stays unused"
    assert session.is_volume and session.n_slices == N_SLICES and session.image is None
    r = session.results[0]
    assert isinstance(r, VolumeResult) and r.present  # threshold 0: every target is present
    assert "**the hepatic lesion**: present: " in out.reply
    assert f"{r.volume_ml:,.1f} mL" in out.reply and " mm across (slice " in out.reply
    assert "on slices " in out.reply and "Loaded ct.nii.gz: a volume of 6 slices" in out.reply
    assert r.probs.size == 0, "probabilities are dropped from the session"
    assert [x.text for x in session.results] == ["the liver", "both kidneys"]
    assert second.reply.count("- **") == 2 and second.reply.count(" mL") >= 2
    # the overlay in the chat and the view show the same slice
    assert out.overlay_path.endswith(f"overlay-slice-{session.slice_index:04d}.png")
    assert out.base.shape[:2] == (384, 384) and len(out.annotations) == 1


def test_volume_not_found_and_an_empty_nifti_mask(tiny_seg, volume_files, tmp_path):
    tiny_seg.threshold = 1.0  # nothing can be present (presence is a sigmoid < 1)
    service = ChatService(tiny_seg, workdir=tmp_path)
    session = ChatSession()
    out = service.respond(session, "the renal cyst", [str(volume_files["ct.nii.gz"])])
    assert "**the renal cyst**: not found (presence 0." in out.reply
    assert "mL" not in out.reply.split("\n")[0]
    assert not np.asarray(nib.load(out.files[0]).dataobj).any()
    assert session.slice_index == N_SLICES // 2, "nothing found: the view stays where it was"


def test_nifti_mask_download_matches_the_input(service, volume_files):
    session = ChatSession()
    source = nib.load(volume_files["ct.nii.gz"])
    out = service.respond(session, "the liver", [str(volume_files["ct.nii.gz"])])
    assert len(out.files) == 1 and out.files[0].endswith("the-liver_mask.nii.gz")
    assert Path(out.files[0]).parent.parent == Path(session.directory)
    mask = nib.load(out.files[0])
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and int(data.sum()) == session.results[0].voxels > 0
    np.testing.assert_array_equal(data.astype(bool), session.results[0].mask)
    session.close()
    assert not Path(out.files[0]).exists(), "the session's files go with it"


def test_zipped_dicom_series(service, volume_files, phantom_volume):
    session = ChatSession()
    out = service.respond(session, "the liver", [str(volume_files["series.zip"])])
    assert "**the liver**: present: " in out.reply and " mL" in out.reply
    assert session.volume.meta["format"] == "dicom-series" and session.n_slices == N_SLICES
    mask = nib.load(out.files[0])  # written as (cols, rows, slices), the usual NIfTI layout
    assert mask.shape == (SIZE, SIZE, N_SLICES)
    assert int(np.asarray(mask.dataobj).sum()) == session.results[0].voxels
    np.testing.assert_allclose(session.volume.spacing, phantom_volume.spacing, rtol=1e-4)


def test_slice_view_follows_the_finding_and_the_slider(service, volume_files):
    session = ChatSession()
    out = service.respond(session, "", [str(volume_files["ct.nii.gz"])])
    assert "Loaded **ct.nii.gz**: a volume of 6 slices of 64 × 64 px" in out.reply
    assert "What should I segment?" in out.reply
    assert session.slice_index == N_SLICES // 2 and out.view_changed and not out.annotations
    out = service.respond(session, "segment the hepatic lesion")
    r = session.results[0]
    assert session.slice_index == r.diameter_slices[0], "shown: the largest finding's slice"
    assert f"Shown: slice {session.slice_index} (of 0–{N_SLICES - 1})" in out.reply
    view = service.slice_view(session, 2)
    assert session.slice_index == 2 and view.view_changed
    expected, small = render.to_display(
        render.gray_to_rgb(session.volume_display[2]), [session.overlay.masks[0][2]]
    )
    np.testing.assert_array_equal(view.base, expected)
    np.testing.assert_array_equal(view.annotations[0][0], small[0])
    label = view.annotations[0][1]
    assert label.startswith("the hepatic lesion (") and label in view.colors
    assert service.slice_view(session, 99.0).base is not None and session.slice_index == 5
    # the mask on the slice view is the result's mask, in display order
    full = session.volume.from_stored(r.mask)
    np.testing.assert_array_equal(session.overlay.masks[0], full)


def test_size_and_count_questions_answer_from_the_last_result(service, volume_files):
    seg = service.segmenter
    session = ChatSession()
    first = service.respond(session, "the hepatic lesion", [str(volume_files["ct.nii.gz"])])
    line = first.reply.split("\n")[0]
    decoder, handle = _runs(seg.model.decoder)
    try:
        out = service.respond(session, "how big is it?")
        assert out.reply.split("\n")[0] == line and not out.view_changed
        out = service.respond(session, "how many hepatic lesions are there?")
        assert out.reply.split("\n")[0].startswith("**hepatic lesions**: present: ")
        assert out.view_changed and out.files, "a new target is segmented"
    finally:
        handle.remove()
    assert len(decoder) == 1 and seg.encoder_calls == 1
    empty = ChatSession()
    service.respond(empty, "", [str(volume_files["ct.nii.gz"])])
    assert "Which structure should I measure?" in service.respond(empty, "how big?").reply


def test_classify_a_volume_and_keep_the_out_of_domain_caution(service, volume_files, monkeypatch):
    seg = service.segmenter
    session = ChatSession()
    service.respond(session, "", [str(volume_files["ct.nii.gz"])])
    out = service.respond(session, "is it a hepatic lesion or a normal liver?")
    assert "Most likely: **" in out.reply and "classified as a whole" in out.reply
    assert not out.view_changed and "Caution" not in out.reply
    ours = seg.classify(session.encoded, ["hepatic lesion", "normal liver"])
    assert ours.top in out.reply
    monkeypatch.setattr(seg, "out_of_domain", lambda encoded: [True])
    out = service.respond(session, "what is this?")
    assert out.reply.startswith("**Caution:** this volume is unlike what this model")
    assert seg.encoder_calls == 1


@pytest.mark.parametrize(
    "name, expected",
    [
        ("two-volumes.nii.gz", "4-D"),
        ("mixed-sizes.zip", "mixed slice sizes"),
        ("no-dicom.zip", "no DICOM image files"),
        ("not-a-zip.zip", "not a readable"),
    ],
)
def test_bad_volumes_get_a_reply_and_the_next_upload_works(
    service, volume_files, phantom_pngs, name, expected
):
    session = ChatSession()
    service.respond(session, "", [str(volume_files["ct.nii.gz"])])
    out = service.respond(session, "the liver", [str(volume_files[name])])
    assert out.reply.startswith(f"I could not use **{name}** as ") and expected in out.reply
    assert "I kept the previous image (ct.nii.gz)" in out.reply
    assert str(volume_files[name].parent) not in out.reply, "no server paths in replies"
    assert session.is_volume and "present: " in service.respond(session, "the liver").reply
    fresh = ChatSession()
    assert "could not use" in service.respond(fresh, "", [str(volume_files[name])]).reply
    assert not fresh.has_image
    out = service.respond(fresh, "segment the liver", [str(phantom_pngs["ct"])])
    assert "**the liver**: area" in out.reply and not fresh.is_volume


def test_a_2d_image_after_a_volume_behaves_as_before(service, volume_files, phantom_pngs):
    session = ChatSession()
    service.respond(session, "the liver", [str(volume_files["ct.nii.gz"])])
    out = service.respond(session, "segment the hepatic lesion", [str(phantom_pngs["ct"])])
    assert "**the hepatic lesion**: area" in out.reply and " px" in out.reply
    assert not session.is_volume and session.volume_display is None and session.overlay is None
    assert session.n_slices == 0 and out.files[0].endswith(".png")
    assert not service.slice_view(session, 3).view_changed
    # a NIfTI of one slice is a 2-D image, as before
    out = service.respond(session, "the liver", [str(volume_files["one-slice.nii.gz"])])
    assert "**the liver**: area" in out.reply and not session.is_volume


def test_segment_once_on_a_volume(service, volume_files):
    out = service.segment_once(str(volume_files["ct.nii.gz"]), "the liver")
    assert "present: " in out.reply and out.overlay is not None
    assert out.files[0].endswith(".nii.gz") and Path(out.files[0]).exists()
    assert "slider" not in out.reply  # the one-picture panel has none


@pytest.mark.parametrize(
    "text, target",
    [
        ("how big is it?", ""),
        ("How many hepatic lesions are there?", "hepatic lesions"),
        ("what is the volume of the liver?", "the liver"),
        ("measure the spleen", "the spleen"),
        ("what are their diameters?", ""),
        ("segment the liver", None),
        ("the hepatic lesion", None),
        ("what is this?", None),
    ],
)
def test_measure_questions(text, target):
    assert measure_question(text) == target


def test_app_slider_and_slice_handler(service, volume_files, phantom_pngs, tmp_path):
    pytest.importorskip("gradio")
    from app import build_demo, slice_slider

    session = ChatSession()
    service.respond(session, "the hepatic lesion", [str(volume_files["ct.nii.gz"])])
    update = slice_slider(session)
    assert update.visible is True and update.maximum == N_SLICES - 1
    assert update.value == session.slice_index
    assert slice_slider(None).visible is False
    demo = build_demo(service.segmenter, examples_dir=tmp_path)
    try:
        fns = {fn.name: fn for fn in demo.fns.values()}
        view = fns["show_slice"].fn(1, session)
        assert session.slice_index == 1 and view.value is not None
        chat = fns["chat"].fn
        other = ChatSession()
        history, _, view, files, other = chat(
            {"text": "the liver", "files": [str(volume_files["ct.nii.gz"])]}, other
        )
        assert "present: " in history[-1]["content"][0] and files[0].endswith(".nii.gz")
        history, *_ = chat({"text": "the liver", "files": [str(phantom_pngs["ct"])]}, other)
        assert "**the liver**: area" in history[-1]["content"][0]
        assert slice_slider(other).visible is False
    finally:
        demo.vlseg_service.close()


def _result(**kw):
    base = dict(
        text="the hepatic lesion",
        mask=np.zeros((2, 2, 2), bool),
        probs=np.zeros((0,), np.float32),
        score=0.93,
        verdict="present",
        volume_ml=14.2,
        voxels=5000,
        n_components=2,
        component_volumes_ml=[9.1, 5.1],
        diameters_mm=[(31.0, 24.5), (20.0, 18.0)],
        diameter_slices=[17, 13],
        slices=[12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 30],
        slice_scores=np.zeros(40, np.float32),
        spacing=(2.5, 0.8, 0.8),
    )
    base.update(kw)
    return VolumeResult(**base)


def test_volume_reply_wording():
    from vlseg.chat.replies import describe_volume, short_measure_volume

    assert describe_volume(_result()) == (
        "**the hepatic lesion**: present: 2 separate regions, 14.2 mL in all (9.10 mL + "
        "5.10 mL); largest 31.0 × 24.5 mm across (slice 17); on slices 12–21, 30 (presence 0.93)"
    )
    one = _result(n_components=1, component_volumes_ml=[14.2], diameters_mm=[(31.0, 24.5)])
    assert "present: 1 region, 14.2 mL; 31.0 × 24.5 mm across (slice 17)" in describe_volume(one)
    unknown = _result(spacing=None, volume_ml=None, component_volumes_ml=[3000.0, 2000.0])
    assert "5,000 voxels in all (3,000 voxels + 2,000 voxels)" in describe_volume(unknown)
    assert "31.0 × 24.5 px across" in describe_volume(unknown)
    assert (
        short_measure_volume(unknown) == "5,000 voxels" and short_measure_volume(one) == "14.2 mL"
    )
    absent = _result(verdict="absent", score=0.04, voxels=0)
    assert describe_volume(absent) == "**the hepatic lesion**: not found (presence 0.04)"
    unsure = _result(verdict="unsure", score=0.5, slices=[3, 4])
    assert (
        "unsure whether it is there (presence 0.50); a tentative outline covers 14.2 mL on "
        "slices 3–4" in describe_volume(unsure)
    )
    ood = _result(verdict="out-of-domain", voxels=0)
    assert "this volume is unlike what this model was trained on" in describe_volume(ood)
    assert short_measure_volume(ood) == "out of domain"


def test_size_in_the_unit_asked_for():
    from vlseg.chat.replies import in_unit, slices_text
    from vlseg.predictor import SegmentationResult

    assert in_unit(_result(), "cm") == (
        "**the hepatic lesion** in cm: 14.20 cm³ (= mL), largest diameters 3.1 × 2.5 cm"
    )
    assert in_unit(_result(), "mm").startswith("**the hepatic lesion** in mm: 14,200 mm³")
    assert in_unit(_result(verdict="absent"), "cm") is None
    assert in_unit(_result(spacing=None, volume_ml=None), "cm") is None
    assert in_unit(_result(), "") is None
    area = SegmentationResult("the liver", np.zeros((2, 2), bool), np.zeros((2, 2)), 0.9,
                              "present", 7482, 1870.5, 1)  # fmt: skip
    assert in_unit(area, "cm") == "**the liver** in cm: 18.70 cm²"
    assert in_unit(area, "ml") is None  # an area has no volume
    assert slices_text(_result()) == ("**the hepatic lesion**: on 11 of 40 slices (12–21, 30)")


def test_slice_questions_and_going_to_a_slice(service, volume_files):
    session = ChatSession()
    service.respond(session, "the hepatic lesion", [str(volume_files["ct.nii.gz"])])
    result = session.results[0]
    out = service.respond(session, "which slices show the hepatic lesion?")
    assert out.reply.startswith("**the hepatic lesion**:")
    if result.present:
        assert f"slice{'s' if len(result.slices) != 1 else ''} (" in out.reply
    assert service.segmenter.encoder_calls == 1
    out = service.respond(session, "go to slice 2")
    assert out.view_changed and out.keep_files and out.base is not None
    assert session.slice_index == 2 and "Slice 2" in out.reply
    out = service.respond(session, f"show slice {N_SLICES + 5}")
    assert "not one of them" in out.reply and session.slice_index == 2


def test_next_and_previous_slice(service, volume_files):
    session = ChatSession()
    service.respond(session, "", [str(volume_files["ct.nii.gz"])])
    service.respond(session, "go to slice 2")
    out = service.respond(session, "next slice")
    assert session.slice_index == 3 and "Slice 3" in out.reply and not session.results
    service.respond(session, "previous slice")
    service.respond(session, "two slices down")
    assert session.slice_index == 0
    service.respond(session, "previous slice")  # stays at the first
    assert session.slice_index == 0
    service.respond(session, "last slice")
    assert session.slice_index == N_SLICES - 1
