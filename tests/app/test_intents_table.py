"""Messages as users type them -> intent and arguments: the table the intent reader is held to.

Each row is (message, kind, arguments, extras): ``arguments`` is the target tuple for
``segment``/``measure``, the label tuple for ``classify``, ``k`` for ``similar``, and None where
an intent takes none; ``extras`` checks more fields (``measure``, ``spacing``). Targets and
labels compare case-insensitively.

The rows were written before the exemplars (``vlseg/chat/exemplars.py``) were tuned, and the
exemplars are not copied from them. The reader must get at least 95% of the rows right, and a
size or count question must never turn into a segmentation prompt made of the question.
"""

from __future__ import annotations

import re

import pytest

from vlseg.chat.intents import parse_message


def R(message, kind, args=None, **extras):
    return (message, kind, args, extras)


SEGMENT = [
    R("segment the liver", "segment", ("the liver",)),
    R("segmnet the livr", "segment", ("the liver",)),
    R("please outline the spleen", "segment", ("the spleen",)),
    R("can you highlight the kidneys for me?", "segment", ("the kidneys",)),
    R("show me where the pancreas is", "segment", ("the pancreas",)),
    R("where's the gallbladder?", "segment", ("the gallbladder",)),
    R("find the tumour", "segment", ("the tumour",)),
    R("the hepatic lesion", "segment", ("the hepatic lesion",)),
    R("liver", "segment", ("liver",)),
    R("left kidney please", "segment", ("left kidney",)),
    R("segment the liver and the spleen", "segment", ("the liver", "the spleen")),
    R("liver, spleen and both kidneys", "segment", ("liver", "spleen", "both kidneys")),
    R("i'd like to see the aorta", "segment", ("the aorta",)),
    R(
        "could you please segment the lesion in the right lobe",
        "segment",
        ("the lesion in the right lobe",),
    ),
    R("mark all the lesions", "segment", ("all the lesions",)),
    R("draw the outline of the kidney", "segment", ("the kidney",)),
    R("give me a mask of the spleen", "segment", ("the spleen",)),
    R("segment the lesion nearest the aorta", "segment", ("the lesion nearest the aorta",)),
    R("what is the biggest lesion?", "segment", ("the largest lesion",)),
    R("which lesion is the largest?", "segment", ("the largest lesion",)),
    R("show the smallest cyst", "segment", ("the smallest cyst",)),
    R("is there a renal cyst?", "segment", ("a renal cyst",)),
    R("are there any lesions in the liver?", "segment", ("lesions in the liver",)),
    R("is this lesion in the liver?", "segment", ("the lesion", "the liver")),
    R("is the lesion inside the liver", "segment", ("the lesion", "the liver")),
    R("highlight the melanoma", "segment", ("the melanoma",)),
    R("locate the mole", "segment", ("the mole",)),
    R("where is the nodule located?", "segment", ("the nodule",)),
    R("segment the left and right kidneys", "segment", ("the left and right kidneys",)),
    R("hilight the lesoin", "segment", ("the lesion",)),
    R("outlin the spleen pls", "segment", ("the spleen",)),
    R("can u segment the kidny", "segment", ("the kidney",)),
    R("Segment The Liver.", "segment", ("the liver",)),
    R("i need the liver segmented", "segment", ("the liver",)),
    R("the bright round spot", "segment", ("the bright round spot",)),
    R("the dark lesion on the left", "segment", ("the dark lesion on the left",)),
    R("find the largest hepatic lesion", "segment", ("the largest hepatic lesion",)),
    R("show me all kidney stones", "segment", ("all kidney stones",)),
    R("where are the kidneys", "segment", ("the kidneys",)),
    R(
        "I want to see the liver and the gallbladder please",
        "segment",
        ("the liver", "the gallbladder"),
    ),
    R("mask the bladder", "segment", ("the bladder",)),
    R("segment both lungs", "segment", ("both lungs",)),
    R("spleen?", "segment", ("spleen",)),
    R("segment the liver, spacing 0.8 mm", "segment", ("the liver",), spacing=(0.8, 0.8)),
    R("the spleen (pixel spacing 0.7 x 0.7 mm)", "segment", ("the spleen",), spacing=(0.7, 0.7)),
    R("pls segment the pancreas thx", "segment", ("the pancreas",)),
    R("could you mark the lesions on the liver", "segment", ("the lesions on the liver",)),
    R("delineate the hypodense mass", "segment", ("the hypodense mass",)),
    R("show me the heart", "segment", ("the heart",)),
    R("detect any nodules", "segment", ("nodules",)),
    R("I'm looking for the right kidney", "segment", ("the right kidney",)),
    R("find the stomach and the spleen", "segment", ("the stomach", "the spleen")),
    R("segment the liver as well as the aorta", "segment", ("the liver", "the aorta")),
    R("the lesion in segment 4", "segment", ("the lesion in segment 4",)),
]

FOLLOW_UPS_AND_NEGATIONS = [
    R("and the spleen?", "segment", ("the spleen",)),
    R("what about the kidneys", "segment", ("the kidneys",)),
    R("now the aorta", "segment", ("the aorta",)),
    R("also the gallbladder", "segment", ("the gallbladder",)),
    R("how about the pancreas?", "segment", ("the pancreas",)),
    R("same for the spleen", "segment", ("the spleen",)),
    R("and the left kidney too", "segment", ("the left kidney",)),
    R("don't segment the liver, segment the spleen", "segment", ("the spleen",)),
    R("not the liver, the spleen", "segment", ("the spleen",)),
    R("the spleen, not the liver", "segment", ("the spleen",)),
    R("segment the kidneys but not the liver", "segment", ("the kidneys",)),
    R("no, I meant the spleen", "segment", ("the spleen",)),
    R("actually, segment the aorta instead", "segment", ("the aorta",)),
    R("do not outline the liver; outline the lesion", "segment", ("the lesion",)),
    R("the liver and the spleen but not the kidneys", "segment", ("the liver", "the spleen")),
]

MEASURE = [
    R("how big is the liver?", "measure", ("the liver",), measure="size"),
    R("how many lesions are there?", "measure", ("lesions",), measure="count"),
    R("what's the volume of the spleen", "measure", ("the spleen",), measure="volume"),
    R("how large is the hepatic lesion", "measure", ("the hepatic lesion",), measure="size"),
    R("what is the size of the tumor?", "measure", ("the tumor",), measure="size"),
    R("how many cysts do you see", "measure", ("cysts",), measure="count"),
    R("measure the kidneys", "measure", ("the kidneys",)),
    R("how big is it?", "measure", (), measure="size"),
    R("what's its diameter", "measure", (), measure="diameter"),
    R("count the nodules", "measure", ("the nodules",), measure="count"),
    R("area of the spleen?", "measure", ("the spleen",), measure="area"),
    R("how big are the liver and the spleen?", "measure", ("the liver", "the spleen")),
    R("whats the volume of teh liver", "measure", ("the liver",), measure="volume"),
    R("how many hepatic lesions can you find?", "measure", ("hepatic lesions",), measure="count"),
    R("could you tell me how large the spleen is?", "measure", ("the spleen",), measure="size"),
    R("i want to know the size of the left kidney", "measure", ("the left kidney",)),
    R("give me the volume of the liver please", "measure", ("the liver",), measure="volume"),
    R("number of lesions?", "measure", ("lesions",), measure="count"),
    R("how long is the aorta", "measure", ("the aorta",)),
    R("how wide is the lesion", "measure", ("the lesion",)),
    R("what is the area of the melanoma", "measure", ("the melanoma",), measure="area"),
    R("how many kidney stones are visible?", "measure", ("kidney stones",), measure="count"),
    R("size of the gallbladder", "measure", ("the gallbladder",), measure="size"),
    R("how big r the kidneys", "measure", ("the kidneys",)),
    R("what's the total lesion volume?", "measure", ("lesion",), measure="volume"),
    R("measure it", "measure", ()),
    R("how mnay lesions", "measure", ("lesions",), measure="count"),
    R("can you measure the spleen for me", "measure", ("the spleen",)),
    R("what are the dimensions of the cyst", "measure", ("the cyst",), measure="diameter"),
    R("how thick is the bladder wall", "measure", ("the bladder wall",)),
    R("how much volume does the liver take up", "measure", ("the liver",), measure="volume"),
    R("how many are there?", "measure", (), measure="count"),
    R("and how big is the spleen?", "measure", ("the spleen",)),
    R("tell me the volume of the right kidney", "measure", ("the right kidney",)),
]

CLASSIFY = [
    R("is this melanoma or a nevus?", "classify", ("melanoma", "nevus")),
    R("what kind of skin lesion is this", "classify", ()),
    R("what is this?", "classify", ()),
    R("whats this", "classify", ()),
    R("is it benign or malignant", "classify", ("benign", "malignant")),
    R("could this be a melanoma?", "classify", ("melanoma",)),
    R("classify this image", "classify", ()),
    R(
        "classify as melanoma, nevus or seborrheic keratosis",
        "classify",
        ("melanoma", "nevus", "seborrheic keratosis"),
    ),
    R("what's the diagnosis?", "classify", ()),
    R("which is more likely: melanoma or nevus?", "classify", ("melanoma", "nevus")),
    R("is the lesion malignant?", "classify", ("malignant",)),
    R("melanoma or nevus?", "classify", ("melanoma", "nevus")),
    R("is this a nevus", "classify", ("nevus",)),
    R("what type of lesion do we have here?", "classify", ()),
    R("diagnose this", "classify", ()),
    R("what do you think this is?", "classify", ()),
    R("does this look like melanoma?", "classify", ("melanoma",)),
    R("clasify this lesion", "classify", ()),
    R("is it a hepatic lesion or normal liver?", "classify", ("hepatic lesion", "normal liver")),
    R("can you tell me what this is", "classify", ()),
    R("melanoma vs nevus", "classify", ("melanoma", "nevus")),
    R("what category does this image belong to?", "classify", ()),
    R("is this mole cancerous?", "classify", ("cancerous",)),
    R("what's in this picture", "classify", ()),
]

SEARCH = [
    R("find similar cases", "similar", 5),
    R("show me 5 cases like this one", "similar", 5),
    R("show me 3 cases like this", "similar", 3),
    R("similar cases?", "similar", 5),
    R("are there any similar images in the database", "similar", 5),
    R("retrieve the 10 most similar cases", "similar", 10),
    R("find look-alikes", "similar", 5),
    R("search for comparable cases", "similar", 5),
    R("have we seen anything like this before?", "similar", 5),
    R("find me similar scans", "similar", 5),
    R("top 3 matches from the archive", "similar", 3),
    R("find simlar cases", "similar", 5),
    R("show similar examples please", "similar", 5),
    R("what other cases look like this", "similar", 5),
    R("get 7 similar images", "similar", 7),
    R("which cases in the index are closest to this one", "similar", 5),
    R("any previous patients with something like this?", "similar", 5),
    R("search the archive for matching images", "similar", 5),
]

HELP = [
    R("help", "help"),
    R("what can you do?", "help"),
    R("how does this work?", "help"),
    R("what commands are there", "help"),
    R("I need help", "help"),
    R("how do I use this?", "help"),
    R("what are you able to do", "help"),
    R("instructions please", "help"),
    R("?", "help"),
    R("hlep", "help"),
    R("what can I ask you", "help"),
    R("what kind of questions do you understand?", "help"),
]

SMALL_TALK = [
    R("hi", "greeting"),
    R("hello there", "greeting"),
    R("good morning", "greeting"),
    R("hey!", "greeting"),
    R("hiya", "greeting"),
    R("good afternoon, doctor bot", "greeting"),
    R("thanks!", "thanks"),
    R("thank you so much", "thanks"),
    R("great, thanks", "thanks"),
    R("cheers", "thanks"),
    R("perfect, thank you", "thanks"),
    R("thx", "thanks"),
    R("that's helpful, thanks a lot", "thanks"),
]

RESET = [
    R("start over", "reset"),
    R("new image please", "reset"),
    R("reset", "reset"),
    R("clear everything", "reset"),
    R("let me upload a different scan", "reset"),
    R("forget this image", "reset"),
    R("I want to start a new case", "reset"),
    R("clear the chat", "reset"),
    R("restart", "reset"),
]

UNKNOWN = [
    R("what's the weather like today?", "unknown"),
    R("tell me a joke", "unknown"),
    R("asdfghjkl", "unknown"),
    R("who won the football game last night?", "unknown"),
    R("I like turtles", "unknown"),
    R("lorem ipsum dolor sit amet", "unknown"),
    R("what is the capital of France?", "unknown"),
    R("write me a poem about autumn", "unknown"),
    R("how do I bake bread?", "unknown"),
    R("qwertyuiop", "unknown"),
    R("book me a flight to Paris", "unknown"),
    R("what's 2 plus 2", "unknown"),
]

ROWS = (
    SEGMENT + FOLLOW_UPS_AND_NEGATIONS + MEASURE + CLASSIFY + SEARCH + HELP + SMALL_TALK + RESET
    + UNKNOWN
)  # fmt: skip

# Written after the first round of changes to the reader, to check that they generalise (92.5%
# on its first run); not part of ROWS.
LATER = [
    R("could you outline the right kidney please", "segment", ("the right kidney",)),
    R("segment teh spleen", "segment", ("the spleen",)),
    R("where exactly is the lesion", "segment", ("the lesion",)),
    R("pancreas please", "segment", ("pancreas",)),
    R("highlight every cyst", "segment", ("every cyst",)),
    R("i'd love to see the kidneys outlined", "segment", ("the kidneys",)),
    R("mark the gallbladder and the aorta", "segment", ("the gallbladder", "the aorta")),
    R("show the largest cyst in the kidney", "segment", ("the largest cyst in the kidney",)),
    R("which nodule is the biggest", "segment", ("the largest nodule",)),
    R("is there any tumor?", "segment", ("tumor",)),
    R("find all hepatic lesions", "segment", ("all hepatic lesions",)),
    R(
        "outline the spleen, the liver, and the stomach",
        "segment",
        ("the spleen", "the liver", "the stomach"),
    ),
    R("segment the lesion closest to the spleen", "segment", ("the lesion closest to the spleen",)),
    R("kidneys", "segment", ("kidneys",)),
    R("the aorta pls", "segment", ("the aorta",)),
    R("and the liver?", "segment", ("the liver",)),
    R("ok now the kidneys", "segment", ("the kidneys",)),
    R("what about the bladder?", "segment", ("the bladder",)),
    R("not the spleen but the kidney", "segment", ("the kidney",)),
    R("don't highlight the aorta, highlight the liver", "segment", ("the liver",)),
    R("sorry, I meant the pancreas", "segment", ("the pancreas",)),
    R("is the cyst within the kidney?", "segment", ("the cyst", "the kidney")),
    R("can you show me the lung nodules", "segment", ("the lung nodules",)),
    R("draw a mask around the tumour", "segment", ("the tumour",)),
    R("how big is the spleen", "measure", ("the spleen",), measure="size"),
    R("how many nodules do you see?", "measure", ("nodules",), measure="count"),
    R("what is the volume of the kidney?", "measure", ("the kidney",), measure="volume"),
    R("how large are the lesions", "measure", ("the lesions",), measure="size"),
    R("spleen size?", "measure", ("spleen",), measure="size"),
    R("liver volume please", "measure", ("liver",), measure="volume"),
    R("count the cysts in the liver", "measure", ("the cysts in the liver",), measure="count"),
    R("how many tumors are in this scan", "measure", ("tumors",), measure="count"),
    R("what's the diameter of the lesion?", "measure", ("the lesion",), measure="diameter"),
    R("please measure the gallbladder", "measure", ("the gallbladder",)),
    R("how big is that?", "measure", (), measure="size"),
    R("how many", "measure", (), measure="count"),
    R("whats the size of the aorta", "measure", ("the aorta",), measure="size"),
    R("how big are they?", "measure", (), measure="size"),
    R("could you tell me the area of the mole", "measure", ("the mole",), measure="area"),
    R("how mny cysts are there", "measure", ("cysts",), measure="count"),
    R("is it a nevus or melanoma?", "classify", ("nevus", "melanoma")),
    R("what is that", "classify", ()),
    R("tell me what this lesion is", "classify", ()),
    R("is this malignant?", "classify", ("malignant",)),
    R("is it benign?", "classify", ("benign",)),
    R("classify it", "classify", ()),
    R("what's the most likely diagnosis", "classify", ()),
    R("is this a melanoma", "classify", ("melanoma",)),
    R("nevus or melanoma", "classify", ("nevus", "melanoma")),
    R("what sort of lesion is that?", "classify", ()),
    R("could this be cancer?", "classify", ("cancer",)),
    R("find cases similar to this", "similar", 5),
    R("show 4 similar cases", "similar", 4),
    R("similar images please", "similar", 5),
    R("look for similar patients", "similar", 5),
    R("find the 8 nearest cases", "similar", 8),
    R("any matches in the archive?", "similar", 5),
    R("show me look-alike images", "similar", 5),
    R("help me please", "help"),
    R("how do i use you", "help"),
    R("what do you do?", "help"),
    R("what can i type here", "help"),
    R("hey there", "greeting"),
    R("good morning!", "greeting"),
    R("hello, how are you?", "greeting"),
    R("thank you!", "thanks"),
    R("thanks, bye", "thanks"),
    R("great work, thank you", "thanks"),
    R("new scan", "reset"),
    R("start again please", "reset"),
    R("clear", "reset"),
    R("i want to try another image", "reset"),
    R("reset everything", "reset"),
    R("what's the time", "unknown"),
    R("can you recommend a restaurant", "unknown"),
    R("zxcvbn", "unknown"),
    R("who is the best footballer", "unknown"),
    R("my cat is sleeping", "unknown"),
    R("how tall is the eiffel tower", "unknown"),
    R("sing me something", "unknown"),
]

QUESTION_WORDS = re.compile(r"\b(how|big|many|much|volume|size|large|area|number)\b", re.I)


# Written with the slice navigation, units and "can't edit" replies (tenth session), as users
# type them; most are not in the unit tests of those features. Held to 90% like LATER.
NAVIGATION_AND_UNITS = [
    R("next slice please", "slice", None, k=1, relative=True),
    R("go back one slice", "slice", None, k=-1, relative=True),
    R("previous slice", "slice", None, k=-1, relative=True),
    R("show me slice 20", "slice", None, k=20),
    R("jump to slice #7", "slice", None, k=7),
    R("slice 0", "slice", None, k=0),
    R("the last slice", "slice", None, k=-1),
    R("3 slices up", "slice", None, k=3, relative=True),
    R("which slices contain the spleen?", "measure", ("the spleen",), measure="slices"),
    R("on which slices are the kidneys?", "measure", ("the kidneys",), measure="slices"),
    R("how many slices show lesions", "measure", ("lesions",), measure="slices"),
    R("how big is the spleen in cm", "measure", ("the spleen",), unit="cm"),
    R("what's the volume of the liver in ml?", "measure", ("the liver",), unit="ml"),
    R("liver size in mm please", "measure", ("liver",), unit="mm"),
    R("area of the lesion in cm²?", "measure", ("the lesion",), unit="cm"),
    R("the spleen in cm", "measure", ("the spleen",), unit="cm"),
    R("undo that", "unknown"),
    R("remove the liver outline", "unknown"),
    R("hide the kidneys please", "unknown"),
    R("erase the mask", "unknown"),
    R("clear the outlines", "unknown"),
    R("delete the scan", "reset"),
    R("start again with a new image", "reset"),
    R(
        "pixel size is 0.6 mm, how big is the liver?", "measure", ("the liver",), spacing=(0.6, 0.6)
    ),  # fmt: skip
]


def check(row) -> str | None:
    """None when ``row`` is read right, else what went wrong."""
    message, kind, args, extras = row
    got = parse_message(message)
    if got.kind != kind:
        return f"{message!r}: kind {got.kind!r}, expected {kind!r}"
    if kind in ("segment", "measure", "classify") and args is not None:
        have = tuple(t.lower() for t in got.targets)
        if have != tuple(a.lower() for a in args):
            return f"{message!r}: {kind} {got.targets}, expected {args}"
    if kind == "similar" and got.k != args:
        return f"{message!r}: k {got.k}, expected {args}"
    for field, value in extras.items():
        if getattr(got, field) != value:
            return f"{message!r}: {field} {getattr(got, field)!r}, expected {value!r}"
    return None


def accuracy() -> tuple[float, list[str]]:
    errors = [e for e in map(check, ROWS) if e]
    return 1 - len(errors) / len(ROWS), errors


def test_the_table_is_large_and_has_no_duplicates():
    assert len(ROWS) >= 150
    messages = [r[0].lower() for r in ROWS]
    assert len(set(messages)) == len(messages)


def test_table_accuracy_is_at_least_95_percent():
    acc, errors = accuracy()
    print(f"\nintent table: {acc:.1%} of {len(ROWS)} rows right")
    for e in errors:
        print("  ", e)
    assert acc >= 0.95, "\n".join(errors)


def test_later_rows_accuracy():
    errors = [e for e in map(check, LATER) if e]
    print(f"\nlater rows: {1 - len(errors) / len(LATER):.1%} of {len(LATER)} right")
    assert 1 - len(errors) / len(LATER) >= 0.9, "\n".join(errors)


def test_navigation_and_unit_rows():
    errors = [e for e in map(check, NAVIGATION_AND_UNITS) if e]
    print(f"\nnavigation/unit rows: {1 - len(errors) / len(NAVIGATION_AND_UNITS):.1%} right")
    assert 1 - len(errors) / len(NAVIGATION_AND_UNITS) >= 0.9, "\n".join(errors)


@pytest.mark.parametrize("row", MEASURE, ids=lambda r: r[0])
def test_size_and_count_questions_never_segment_the_question(row):
    got = parse_message(row[0])
    if got.kind in ("segment", "measure"):
        for target in got.targets:
            assert not QUESTION_WORDS.search(target), f"{row[0]!r} -> prompt {target!r}"


def test_no_message_segments_question_words():
    for message, _, _, _ in ROWS + LATER:
        got = parse_message(message)
        if got.kind in ("segment", "measure"):
            bad = [t for t in got.targets if QUESTION_WORDS.search(t)]
            assert not bad, f"{message!r} -> prompts {bad}"
