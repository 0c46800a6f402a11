"""Message parsing: intents, several targets, stated pixel spacing."""

import pytest

from vlseg.chat.intents import MAX_TARGETS, extract_spacing, parse_message, split_targets


@pytest.mark.parametrize(
    "text, targets",
    [
        ("segment the hepatic lesion", ("the hepatic lesion",)),
        ("the liver and the hepatic lesion", ("the liver", "the hepatic lesion")),
        ("both kidneys", ("both kidneys",)),
        ("segment both kidneys please", ("both kidneys",)),
        ("the left and right kidneys", ("the left and right kidneys",)),
        ("the lesions in the left and right lobes", ("the lesions in the left and right lobes",)),
        ("liver and spleen", ("liver", "spleen")),
        (
            "show me the liver, the spleen, and both kidneys",
            ("the liver", "the spleen", "both kidneys"),
        ),  # noqa: E501
        ("Can you please outline the melanoma?", ("the melanoma",)),
        ("where is the spleen?", ("the spleen",)),
        ("is there a renal cyst?", ("a renal cyst",)),
        ("the liver; the liver", ("the liver",)),
        ("the liver as well as the spleen", ("the liver", "the spleen")),
    ],
)
def test_segment_targets(text, targets):
    intent = parse_message(text)
    assert intent.kind == "segment"
    assert intent.targets == targets


@pytest.mark.parametrize(
    "text, labels",
    [
        ("what is this?", ()),
        ("What's in this image", ()),
        ("classify", ()),
        ("classify as melanoma, nevus or dermatofibroma", ("melanoma", "nevus", "dermatofibroma")),
        ("is it a melanoma or a nevus?", ("melanoma", "nevus")),
        ("is this lesion melanoma or nevus", ("melanoma", "nevus")),
        ("could it be a nevus?", ("nevus",)),
    ],
)
def test_classify(text, labels):
    intent = parse_message(text)
    assert intent.kind == "classify"
    assert intent.targets == labels


@pytest.mark.parametrize(
    "text, k", [("find similar cases", 5), ("similar cases", 5), ("find 3 similar cases", 3)]
)
def test_similar(text, k):
    intent = parse_message(text)
    assert (intent.kind, intent.k) == ("similar", k)


@pytest.mark.parametrize("text", ["help", "Help!", "?", "what can you do?"])
def test_help(text):
    assert parse_message(text).kind == "help"


def test_hello_is_a_greeting():
    assert parse_message("hello").kind == "greeting"


def test_help_me_segment_is_a_segmentation():
    assert parse_message("help me segment the liver").targets == ("the liver",)


def test_empty_and_command_only_messages_have_no_targets():
    for text in ["", "   ", "segment", "please segment."]:
        intent = parse_message(text)
        assert intent.kind == "segment" and intent.targets == ()


def test_too_many_targets_are_capped_with_a_note():
    intent = parse_message(", ".join(f"thing {i}" for i in range(MAX_TARGETS + 3)))
    assert len(intent.targets) == MAX_TARGETS and "first" in intent.note


@pytest.mark.parametrize(
    "text, rest, spacing",
    [
        ("segment the liver (spacing 0.8 mm)", "segment the liver", (0.8, 0.8)),
        ("the liver, pixel spacing 0.7 x 0.8 mm", "the liver", (0.7, 0.8)),
        ("the liver 1.2 mm/px", "the liver", (1.2, 1.2)),
        ("pixel size is 0.7mm, how big is the spleen", "how big is the spleen", (0.7, 0.7)),
        ("the liver spacing=0", "the liver", None),
        ("spacing 80 mm how big is the liver", "how big is the liver", None),
        ("pixel size 0.5 cm how big is the liver", "how big is the liver", (5.0, 5.0)),
        ("pixel size 50 µm", "", (0.05, 0.05)),
        ("the pixel size is 0.5 mm, segment the liver", "segment the liver", (0.5, 0.5)),
        ("the liver", "the liver", None),
    ],
)
def test_spacing(text, rest, spacing):
    assert extract_spacing(text) == (rest, spacing)
    assert parse_message(text).spacing == spacing


@pytest.mark.parametrize("text", ["the liver spacing=0", "spacing 80 mm how big is the liver"])
def test_an_implausible_spacing_is_refused_with_a_note(text):
    note = parse_message(text).note
    assert "did not use the pixel spacing" in note and "mm" in note


@pytest.mark.parametrize(
    "text, target, measure, unit",
    [
        ("what is the size of the liver in cm?", "the liver", "size", "cm"),
        ("how big is the liver in mm?", "the liver", "size", "mm"),
        ("what's the liver area in cm2?", "liver", "area", "cm"),
        ("how big is the spleen in cm²?", "the spleen", "size", "cm"),
        ("what is the volume of the liver in mL?", "the liver", "volume", "ml"),
        ("pixel size is 0.7mm, what's the area of the spleen in cm2?", "the spleen", "area", "cm"),
        ("how many slices have lesions", "lesions", "slices", ""),
        ("which slices show the liver?", "the liver", "slices", ""),
        ("on which slices is the spleen visible?", "the spleen", "slices", ""),
        ("please, which slices have lesions?", "lesions", "slices", ""),
        ("how big is the liver in mm3?", "the liver", "size", "mm"),
        ("the lesion in cm", "the lesion", "size", "cm"),
    ],
)
def test_units_and_slice_questions_are_not_targets(text, target, measure, unit):
    intent = parse_message(text)
    assert intent.kind == "measure"
    assert intent.targets == (target,) and intent.measure == measure and intent.unit == unit


@pytest.mark.parametrize(
    "text", ["undo", "remove that", "hide the liver", "clear the mask", "remove the spleen outline"]
)
def test_editing_the_drawing_is_neither_a_target_nor_a_reset(text):
    intent = parse_message(text)
    assert intent.kind == "unknown" and "start over" in intent.note


@pytest.mark.parametrize(
    "text",
    [
        "remove the image",
        "start over",
        "clear all",
        "remove the images",
        "delete the CT scan",
        "clear the conversation",
        "remove the current image",
    ],
)
def test_forgetting_the_image_is_still_a_reset(text):
    assert parse_message(text).kind == "reset"


@pytest.mark.parametrize(
    "text, k, relative",
    [
        ("show slice 8", 8, False),
        ("go to slice 12", 12, False),
        ("slice 3", 3, False),
        ("next slice", 1, True),
        ("previous slice", -1, True),
        ("go to the previous slice", -1, True),
        ("3 slices down", -3, True),
        ("last slice", -1, False),
    ],
)
def test_go_to_a_slice(text, k, relative):
    intent = parse_message(text)
    assert intent.kind == "slice" and intent.k == k and intent.relative == relative


def test_next_image_is_still_a_new_image():
    assert parse_message("next image please").kind == "reset"


def test_split_targets_doc_example():
    assert split_targets("show me the liver, the spleen and the left and right kidneys") == (
        "the liver",
        "the spleen",
        "the left and right kidneys",
    )


def test_non_str_message_is_a_type_error():
    with pytest.raises(TypeError, match="message must be str"):
        parse_message(None)


def test_follow_ups_repeat_a_measurement():
    assert parse_message("and the spleen?", previous="measure").kind == "measure"
    assert parse_message("and the spleen?", previous="segment").kind == "segment"
    assert parse_message("and the spleen?").targets == ("the spleen",)


def test_a_message_that_only_negates_is_not_acted_on():
    intent = parse_message("don't segment the liver")
    assert intent.kind == "unknown" and "won't" in intent.note
    assert parse_message("not the liver, the spleen").targets == ("the spleen",)


def test_typo_corrections_are_noted_and_model_words_are_kept():
    intent = parse_message("segmnet the livr")
    assert intent.targets == ("the liver",) and "*livr* as *liver*" in intent.note
    assert "segmnet" not in intent.note  # only corrections that reach a target are told
    assert parse_message("segment the livr", vocabulary=["livr"]).targets == ("the livr",)
    assert parse_message("the hepar").targets == ("the hepar",)  # not a typo of "heart"


def test_measure_quantities():
    cases = {
        "how big is the liver?": "size",
        "how many cysts?": "count",
        "liver volume": "volume",
        "area of the mole": "area",
        "what's the diameter of the nodule?": "diameter",
    }
    for text, quantity in cases.items():
        intent = parse_message(text)
        assert (intent.kind, intent.measure) == ("measure", quantity), text


def test_the_confidence_is_a_similarity():
    sure = parse_message("segment the liver")
    assert 0.5 < sure.confidence <= 1.5
    assert parse_message("tell me a joke").confidence < sure.confidence


def test_answers_to_did_you_mean():
    from vlseg.chat.intents import answer_to_question

    assert [answer_to_question(t) for t in ["yes", "Yes please", "1", "the second one", "no"]] == [
        0,
        0,
        0,
        1,
        -1,
    ]
    assert answer_to_question("segment the liver") is None


def test_without_the_sentence_model_the_grammar_reads_messages(monkeypatch):
    from vlseg.chat import intents

    monkeypatch.setattr(intents, "_exemplar_bank", lambda: None)
    assert parse_message("how big is the liver?").targets == ("the liver",)
    assert parse_message("find 3 similar cases").k == 3
    assert parse_message("is it a melanoma or a nevus?").kind == "classify"
    assert parse_message("help").kind == "help"
    assert parse_message("the hepatic lesion").targets == ("the hepatic lesion",)


def test_the_model_loads_once_and_examples_are_embedded_once(monkeypatch):
    from vlseg.chat import intents, sentences

    intents.warm_up()
    calls = []
    embed = sentences.embed
    monkeypatch.setattr(sentences, "embed", lambda texts: calls.append(list(texts)) or embed(texts))
    sentences.embed_one.cache_clear()
    for text in ["segment the kidney", "how big is the kidney", "segment the kidney"]:
        parse_message(text)
    assert calls == [["segment the thing"], ["how big is the thing"]]  # one per new message


@pytest.mark.parametrize("text", ["the mass in CC view", "the mass in ML view"])
def test_abbreviations_inside_a_target_are_not_units(text):
    intent = parse_message(text)
    assert intent.unit == "" and intent.targets == (text,)
