"""Chat turns routed by meaning: questions about a target segment the target, not the question."""

import numpy as np
import pytest

from vlseg.chat import ChatService, ChatSession
from vlseg.chat.intents import Intent


@pytest.fixture
def service(eager_seg, tmp_path):
    svc = ChatService(eager_seg, workdir=tmp_path / "work")
    yield svc
    svc.close()


@pytest.fixture
def prompts(service, monkeypatch):
    """Every text list passed to ``Segmenter.segment``, in order."""
    seen = []
    segment = service.segmenter.segment

    def spy(image=None, text="", **kwargs):
        seen.append([text] if isinstance(text, str) else list(text))
        return segment(image, text, **kwargs)

    monkeypatch.setattr(service.segmenter, "segment", spy)
    return seen


class RecordingIndex:
    def __init__(self):
        self.queries = []

    def search_meta(self, vectors, k):
        self.queries.append(k)
        return [[{"caption": "a case", "score": 0.5}] * k]


def test_how_big_is_the_liver_segments_the_liver_and_gives_its_area(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "how big is the liver?")
    assert prompts == [["the liver"]], "the target, never the question"
    assert out.reply.startswith("**the liver**: area ") and " px" in out.reply
    assert out.view_changed and len(out.files) == 1
    reference = service.segmenter.segment(str(phantom_pngs["ct"]), "the liver")
    assert session.results[0].area_px == reference.area_px
    assert f"{reference.area_px:,} px" in out.reply


def test_a_size_question_about_the_last_answer_needs_no_model_run(service, phantom_pngs, prompts):
    session = ChatSession()
    first = service.respond(session, "segment the liver", [str(phantom_pngs["ct"])])
    out = service.respond(session, "how big is it?")
    assert prompts == [["the liver"]] and not out.view_changed
    assert out.reply.split("\n")[0] == first.reply.split("\n")[0]
    out = service.respond(session, "what's the volume of the liver?")
    assert "2-D image, so I give the area" in out.reply and prompts == [["the liver"]]


def test_count_questions_segment_the_counted_thing(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "how many lesions are there?")
    assert prompts == [["lesions"]]
    assert out.reply.startswith("**lesions**: ") and "connected component" in out.reply


def test_what_is_the_biggest_lesion_asks_for_the_largest_lesion(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "what is the biggest lesion?")
    assert prompts == [["the largest lesion"]]
    assert "Most likely" not in out.reply and out.view_changed


def test_the_lesion_nearest_the_aorta_is_segmented_not_searched(service, phantom_pngs, prompts):
    service.index = RecordingIndex()
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "segment the lesion nearest the aorta")
    assert service.index.queries == []
    assert prompts == [["the lesion nearest the aorta"]]
    assert out.reply.startswith("**the lesion nearest the aorta**")
    service.respond(session, "find 3 similar cases")
    assert service.index.queries == [3]


def test_is_this_lesion_in_the_liver_checks_where_the_lesion_is(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "is this lesion in the liver?")
    assert "Most likely" not in out.reply, "not a classification with the label 'in the liver'"
    assert prompts == [["the lesion", "the liver"]]
    first = out.reply.split("\n")[0]
    assert "**the lesion**" in first and "**the liver**" in first
    lesion, liver = session.results
    if lesion.present and liver.present:
        share = (lesion.mask & liver.mask).sum() / lesion.mask.sum()
        assert first.startswith(("Yes:", "Mostly:", "Only partly:", "No:"))
        if 0 < share < 0.9:
            assert f"{share:.0%}" in first


def test_follow_ups_repeat_the_last_kind_of_request(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "how big is the liver?", [str(phantom_pngs["ct"])])
    out = service.respond(session, "and the spleen?")
    assert prompts == [["the liver"], ["the spleen"]] and session.last_kind == "measure"
    assert out.reply.startswith("**the spleen**: area")
    service.respond(session, "don't segment the kidneys, segment the aorta")
    assert prompts[-1] == ["the aorta"]


def test_did_you_mean_then_yes_runs_the_first_reading(service, phantom_pngs, prompts, monkeypatch):
    import vlseg.chat.service as service_module

    readings = (Intent("segment", ("the liver",)), Intent("measure", ("the liver",)))
    unsure = Intent("clarify", alternatives=readings, confidence=0.3)
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    monkeypatch.setattr(service_module, "parse_message", lambda *a, **k: unsure)
    out = service.respond(session, "liver thing maybe")
    assert "Did you mean" in out.reply and "1. segment *the liver*" in out.reply
    assert "2. measure *the liver*" in out.reply
    assert prompts == [] and session.pending == readings
    out = service.respond(session, "yes")
    assert prompts == [["the liver"]] and out.reply.startswith("**the liver**: area")
    assert session.pending == ()
    service.respond(session, "hmm")  # asks again
    out = service.respond(session, "no")
    assert "What would you like me to do" in out.reply and prompts == [["the liver"]]


def test_small_talk_reset_and_unknown(service, phantom_pngs, prompts):
    session = ChatSession()
    assert "Hello!" in service.respond(session, "hi there").reply
    out = service.respond(session, "hello", [str(phantom_pngs["ct"])])
    assert out.reply.startswith("Hello! Loaded **ct.png**") and session.has_image
    assert "welcome" in service.respond(session, "thanks a lot!").reply
    out = service.respond(session, "what's the weather like in Paris?")
    assert out.reply.startswith("Sorry, I did not understand") and prompts == []
    out = service.respond(session, "don't segment the liver")
    assert out.reply.count("I won't") == 1 and prompts == []
    out = service.respond(session, "start over")
    assert "forgot the image" in out.reply and out.view_changed and out.base is None
    assert not session.has_image
    assert "upload an image first" in service.respond(session, "segment the liver").reply.lower()
    assert "no image to forget" in service.respond(session, "reset").reply
    assert prompts == []


def test_typos_are_corrected_and_said(service, phantom_pngs, prompts):
    session = ChatSession()
    service.respond(session, "", [str(phantom_pngs["ct"])])
    out = service.respond(session, "segmnet the livr")
    assert prompts == [["the liver"]] and "I read *livr* as *liver*" in out.reply


def test_volume_measure_and_follow_up(service, volume_files, prompts):
    session = ChatSession()
    out = service.respond(session, "how big is the liver?", [str(volume_files["ct.nii.gz"])])
    assert prompts == [["the liver"]] and out.reply.startswith("**the liver**: ")
    out = service.respond(session, "how many are there?")
    assert prompts == [["the liver"]] and not out.view_changed  # the last answer's count
    out = service.respond(session, "what about the spleen")
    assert prompts[-1] == ["the spleen"]
    assert np.asarray(session.results[0].mask).ndim == 3
