"""Read one chat message: what the user wants (intent) and what it refers to (arguments).

Two parts, each doing what it is good at:

- **Meaning.** The message is embedded with the offline sentence model (all-MiniLM-L6-v2, see
  :mod:`vlseg.chat.sentences`) and compared with a few dozen example messages per intent
  (:mod:`vlseg.chat.exemplars`); an intent's score is the mean cosine similarity of its two
  nearest examples. A small bonus goes to an intent whose grammar recognises the message's
  form (a size question, "is it X or Y?", a leading "segment ..."). The best score is the
  confidence; when it is low, or two different actions score about the same, the message is
  not acted on: it becomes a ``clarify`` intent carrying the best one or two readings, which
  the chat offers as "Did you mean ...?".
- **Arguments.** A small grammar reads them: targets (without politeness, question and
  measurement words: "how big is the liver?" -> the liver), several targets ("the liver and the
  spleen"), the pixel spacing ("spacing 0.8 mm"), k ("5 similar cases"), classification labels
  ("is it melanoma or nevus?"), negations ("don't segment the liver, segment the spleen" -> the
  spleen) and follow-ups ("and the spleen?", "what about the kidneys").

Before both, obvious typos in command and anatomy words are corrected ("segmnet the livr" ->
"segment the liver"); a correction that lands in a target is stated in the reply.

Without the sentence model (a broken install) the grammar alone decides, as before.

Example:
    >>> parse_message("segment the liver and the hepatic lesion").targets
    ('the liver', 'the hepatic lesion')
    >>> intent = parse_message("how big is the liver?")
    >>> intent.kind, intent.targets, intent.measure
    ('measure', ('the liver',), 'size')
    >>> intent = parse_message("is it a melanoma or a nevus?")
    >>> intent.kind, intent.targets
    ('classify', ('melanoma', 'nevus'))
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from ..requests import LEAD as _LEAD
from ..requests import SHOW_WHERE as _SHOW_WHERE
from ..requests import TAIL as _TAIL
from ..requests import strip_request
from . import sentences

INTENTS = (
    "segment",  # targets: referring expressions
    "measure",  # targets: what to measure or count (empty: the last answer's); measure: what
    "classify",  # targets: candidate labels (empty: the model's defaults)
    "similar",  # search the case index; k: how many
    "help",
    "greeting",
    "thanks",  # thanks, goodbye
    "reset",  # forget the image and start again
    "slice",  # show one slice of a volume; k: its index (-1: the last), or a step (relative)
    "unknown",  # none of the above
    "clarify",  # unsure: alternatives holds the best readings
)
ACTIONS = ("segment", "measure", "classify", "similar", "reset")
MEASURES = ("size", "count", "volume", "area", "diameter", "slices")
PLAUSIBLE_SPACING_MM = (0.001, 10.0)  # a stated pixel spacing outside this is not used
UNITS = ("mm", "cm", "ml")  # units a size question may ask for (cm: cm and cm²; ml: mL, cc, cm³)
MAX_TARGETS = 8  # segmentation targets per message
MAX_SIMILAR = 20  # retrieval results per message
DEFAULT_SIMILAR = 5

# Decision thresholds on cosine scores (mean of the two nearest examples, plus cue bonuses).
GRAMMAR_BONUS = 0.12  # an intent whose grammar recognises the message's form
MIN_CONFIDENCE = 0.38  # below: not acted on (a bare noun phrase still reads as a target)
MIN_MARGIN = 0.025  # two different actions closer than this: ask which one
SURE = 0.62  # at or above: no question asked, whatever the margin

# Words that modify a noun that comes later: "the left and right kidneys" is one target.
_MODIFIERS = {
    "left", "right", "upper", "lower", "anterior", "posterior", "medial", "lateral", "superior",
    "inferior", "central", "peripheral", "proximal", "distal", "small", "smaller", "smallest",
    "large", "larger", "largest", "big", "bigger", "biggest", "tiny", "bright", "dark", "round",
    "hyperdense", "hypodense", "isodense", "dense", "light", "pale", "irregular", "regular",
}  # fmt: skip
_DETERMINERS = r"(?:the|a|an|both|all|any|each|every|its|their|this|that|these|those|some)"

# -- typos ------------------------------------------------------------------------------------
_SLANG = {
    "u": "you", "r": "are", "ur": "your", "pls": "please", "plz": "please", "thx": "thanks",
    "thnx": "thanks", "thanx": "thanks", "teh": "the", "hte": "the", "whats": "what's",
    "wats": "what's", "wat": "what", "wheres": "where's", "hows": "how's", "im": "i'm",
    "dont": "don't", "didnt": "didn't", "cant": "can't", "isnt": "isn't", "theres": "there's",
    "abt": "about", "hilight": "highlight", "hilite": "highlight", "lession": "lesion",
    "segement": "segment", "measue": "measure",
}  # fmt: skip
# Words the grammar and the examples rely on, and common anatomy and findings: a misspelling of
# one of them (not itself a word) is corrected.
LEXICON = frozenset(
    """
    segment segmentation outline highlight delineate locate mark mask draw detect display
    identify show find where measure measurement count quantify calculate classify
    classification diagnose diagnosis similar similarity cases images scans retrieve search
    compare comparable closest matches help instructions commands hello thanks thank please
    volume size area diameter dimensions many large big biggest largest small smallest how
    what which lesion lesions liver spleen kidney kidneys pancreas aorta gallbladder bladder
    stomach lung lungs heart tumor tumors tumour tumours nodule nodules cyst cysts mass masses
    melanoma melanomas nevus mole moles hepatic renal splenic pancreatic metastasis metastases
    vertebra vertebrae prostate thyroid adrenal colon bowel intestine esophagus trachea brain
    uterus ovary ovaries artery vein vessel vessels calcification calcifications stone stones
    keratosis seborrheic dermatofibroma carcinoma basal benign malignant cancerous lymph
    abdomen abdominal pelvis muscle bone femur skull
    """.split()
)

# -- the grammar ------------------------------------------------------------------------------
_SUPERLATIVE = r"(?:biggest|largest|smallest|tiniest|brightest|darkest|most\s+\w+|least\s+\w+)"
# "what is the biggest lesion?", "which is the largest cyst"
_WHICH_IS_SUP = re.compile(
    rf"^(?:what|which)(?:'s|\s+is|\s+are|\s+one\s+is)\s+(?P<x>(?:the\s+)?{_SUPERLATIVE}\s+.+)$",
    re.I,
)
# "which lesion is the largest?"
_WHICH_X_IS_SUP = re.compile(
    rf"^which\s+(?P<x>.+?)\s+(?:is|are)\s+(?:the\s+)?(?P<s>{_SUPERLATIVE})(?:\s+one)?$", re.I
)
_SYNONYM_SUP = {"biggest": "largest", "tiniest": "smallest"}
# "is this lesion in the liver?": where one thing lies relative to another
_INSIDE = re.compile(
    r"^(?:is|are|does|do)\s+(?P<x>(?:this|the|that|these|those|it|they)(?:\s+[\w'-]+){0,4}?)\s+"
    r"(?:(?:lie|lies|sit|sits|located|situated)\s+)?(?:in|inside|within|part of|in\s+the\s+"
    r"region\s+of|contained\s+in)\s+(?P<y>.+)$",
    re.IGNORECASE,
)
_SPACING = [
    # "spacing 0.8", "pixel spacing: 0.7 x 0.8 mm", "spacing=0.75mm"
    re.compile(
        r"\(?\b(?:pixel\s+)?spacing\s*(?:=|:|of|is)?\s*(\d*\.?\d+)(?:\s*(?:x|×|,|by)\s*"
        r"(\d*\.?\d+))?\s*(?:mm)?(?:\s*(?:/|per)\s*(?:px|pixel))?\)?",
        re.IGNORECASE,
    ),
    # "0.8 mm/px", "0.8 mm per pixel"
    re.compile(r"\(?\b(\d*\.?\d+)\s*mm\s*(?:/|per)\s*(?:px|pixel)\)?()", re.IGNORECASE),
    # "pixel size is 0.7mm", "pixel size 0.7 x 0.8 mm", "0.7 mm pixels"
    re.compile(
        r"\(?\b(?:(?:the|my|a|its)\s+)?pixel\s+(?:size|width|dimensions?)\s*(?:=|:|of|is)?\s*"
        r"(\d*\.?\d+)(?![\d.])(?:\s*(?:x|×|,|by)\s*(\d*\.?\d+)(?![\d.]))?"
        r"\s*(?P<unit>mm|cm|µm|μm|um|microns?)?\b\)?",
        re.IGNORECASE,
    ),
    re.compile(r"\(?\b(\d*\.?\d+)\s*mm\s+pixels?\)?()", re.IGNORECASE),
]
# "... in cm?", "in square centimetres", "in mL": the unit a size question asks for
_UNIT = re.compile(
    r"\s*\b(?:in|as|using)\s+(?P<u>square\s+(?:centi|milli)met(?:er|re)s|cubic\s+(?:centi|milli)"
    r"met(?:er|re)s|(?:centi|milli)met(?:er|re)s|millilit(?:er|re)s|mls?|cc|(?:cm|mm)(?:\^?[23]|[²³])?)"
    r"(?![\w²³])(?=\s*(?:please)?\s*[?.!]*\s*(?:[,;]|$))",
    re.IGNORECASE,
)
# "how many slices have lesions", "which slices show the liver", "on which slices is the spleen"
_SLICES_WITH = re.compile(
    r"(?:how\s+many|which|what)\s+slices\s+(?:have|has|show|shows|contain|contains|with|"
    r"include|includes)\s+(?P<x>.+?)(?:\s+(?:in|on)\s+(?:them|it))?"
    r"|(?:on|in)\s+(?:which|what|how\s+many)\s+slices\s+(?:is|are|do\s+you\s+see|can\s+you\s+"
    r"see|does|do)\s+(?P<y>.+?)(?:\s+(?:visible|seen|appear|show|found|present))?",
    re.IGNORECASE,
)
# "show slice 8", "go to slice 12", "slice 5 please"
_GOTO_SLICE = re.compile(
    r"^(?:(?:please\s+)?(?:show(?:\s+me)?|go\s+to|goto|jump\s+to|move\s+to|display|open|view|"
    r"scroll\s+to)\s+)?(?:the\s+)?slice\s+(?:number\s+|no\.?\s*|#\s*)?(?P<k>\d+)(?:\s+please)?$",
    re.IGNORECASE,
)
# "next slice", "previous slice", "first slice", "last slice", "two slices up"
_STEP_SLICE = re.compile(
    r"^(?:(?:please\s+)?(?:go\s+to|goto|show(?:\s+me)?|move\s+to|jump\s+to)\s+)?(?:the\s+)?"
    r"(?P<w>next|following|previous|prev|preceding|first|last)\s+slice(?:\s+please)?$"
    r"|^(?:(?:go|move|step)\s+)?(?P<n>one|two|three|four|five|\d+)?\s*slices?\s+"
    r"(?P<d>up|down|forward|back|backward|further|higher|lower)(?:\s+please)?$"
    r"|^(?:go|move|step)\s+(?P<d2>back|backward|forward|up|down)\s+(?:by\s+)?"
    r"(?P<n2>one|two|three|four|five|a|\d+)?\s*slices?(?:\s+please)?$",
    re.IGNORECASE,
)
# "undo", "remove that", "hide the liver", "clear the mask": editing the drawing, which the chat
# does not do (it is not "forget the image")
_EDIT = re.compile(
    r"^(?:please\s+)?(?:undo(?:\s+(?:that|it|this|the\s+last\s+(?:one|step|outline)))?|"
    r"(?:remove|delete|erase|hide|clear|take\s+away|get\s+rid\s+of)\s+(?:that|it|this|"
    r"(?:the|that|this|all|all\s+the)\s+(?:last\s+)?(?:[\w'-]+\s+){0,3}?(?:outlines?|masks?|"
    r"overlays?|contours?|drawings?|annotations?|colou?rs?|highlights?|segmentations?)|"
    r"the\s+(?!(?:[\w'-]+\s+){0,2}(?:images?|scans?|pictures?|photos?|volumes?|files?|uploads?|"
    r"ct|mri|dicom|nifti|study|studies|series|data|screen|chat|conversation|history|session|"
    r"cases?|patients?|whole\s+thing|everything)\b)"
    r"[\w'-]+(?:\s+[\w'-]+){0,2})(?:\s+(?:outline|mask|overlay|contour))?)(?:\s+please)?$",
    re.IGNORECASE,
)
EDIT_TEXT = (
    "I can't edit the drawing outline by outline. Ask for what you want to see (e.g. *the "
    "liver*) and only that is drawn; the image stays loaded. To forget the image, say *start "
    "over*."
)

# Size and count questions: "how big is the lesion?", "how many lesions are there?", "what is
# the volume of the liver?", "liver volume?", "measure it".
_MEASURE = re.compile(
    r"^(?:(?P<qa>how\s+(?:big|large|small|long|wide|thick|tall|extensive|much\s+volume|"
    r"much\s+space))(?:\s+(?:is|are|was|were|does|do))?(?:\s+(?P<a>.*?))?"
    r"(?:\s+(?:measure|take\s+up|occupy|is|are))?"
    r"|(?P<qb>how\s+many)(?:\s+(?P<b>.*?))?(?:\s+(?:are|is)\s+there|\s+(?:do|can)\s+you\s+"
    r"(?:see|find|count|detect|spot)|\s+(?:are|is)\s+(?:visible|present|shown|seen|there)"
    r"|\s+(?:are|is)\s+(?:in|on)\s+(?:the|this)\s+(?:image|scan|slice|picture|volume))?"
    r"|(?:what(?:'s|\s+is|\s+are)\s+)?(?:(?:the|its|their)\s+)?(?:total\s+)?"
    r"(?P<qc>size|volume|area|surface\s+area|diameters?|dimensions?|extent|count|number|"
    r"measurements?|length|width)(?:\s+of)?(?:\s+(?P<c>.*?))?"
    r"|(?:what(?:'s|\s+is|\s+are)\s+)?(?:(?:the|its|their)\s+)?(?:total\s+)?(?P<e>.+?)\s+"
    r"(?P<qe>size|volume|area|diameters?|dimensions?|count)"
    r"|(?P<qd>measure|count|quantify|calculate(?:\s+the\s+(?:size|volume|area)\s+of)?)"
    r"(?:\s+(?P<d>.*?))?)$",
    re.IGNORECASE,
)
_MEASURE_LEAD = re.compile(
    r"^(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:tell|give|show)\s+me|tell\s+me|"
    r"give\s+me|show\s+me|i\s+(?:want|need|would like|'d like)\s+(?:to\s+know\s+)?|"
    r"do\s+you\s+know|i\s+wonder|let\s+me\s+know)\b\s*",
    re.IGNORECASE,
)
_MEASURE_WORDS = re.compile(
    r"\b(?:how|big|bigger|large|many|much|volume|volumes|size|sizes|area|areas|number|count|"
    r"measure|measurements?|diameters?|dimensions?|extent|total|length|width)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(
    r"^(?:it|its|they|them|their|this|that|these|those|one|ones|this one|that one|there|"
    r"of them|of those)?$",
    re.I,
)
_QUANTITY = (
    ("count", re.compile(r"many|count|number", re.I)),
    ("volume", re.compile(r"volume|space", re.I)),
    ("area", re.compile(r"area", re.I)),
    ("diameter", re.compile(r"diameter|dimension|long|wide|thick|tall|length|width", re.I)),
)

_CLASSIFY_OPEN = re.compile(
    r"^(?:so,?\s+)?(?:please\s+)?(?:what(?:'s| is| are)\s+(?:this|it|that|shown|these|"
    r"in (?:this|the) (?:image|picture|photo|scan))|what do you (?:see|think)|"
    r"what (?:kind|type|sort|category|class) of|which (?:class|category|diagnosis|label|type|"
    r"kind|one is (?:more|most) likely|is (?:more|most) likely)|classify|clasify|diagnose|"
    r"diagnosis|categori[sz]e|(?:can|could) you tell (?:me )?what)\b",
    re.IGNORECASE,
)
_CLASSIFY_AMONG = re.compile(r"(?:\b(?:as|among|between|into)\b|:)\s*(.+)$", re.IGNORECASE)
_IS_IT = re.compile(
    r"^(?:so,?\s+)?(?:is|are|could|might|would|does|do)\s+(?:(?:this|the|that|these|those)\s+"
    r"(?:[\w-]+\s+)?(?:lesion|image|finding|scan|mass|spot|mole|nodule|tumou?r|region|area|"
    r"thing|one|case|growth|picture|photo)s?|it|this|that|they|these|those)(?:\s+be)?"
    r"(?:\s+(?:look|looks|seem|seems|appear|appears)(?:\s+(?:like|to\s+be))?)?\s+(?P<x>.+)$",
    re.IGNORECASE,
)
_EITHER = re.compile(r"\s(?:or|vs\.?|versus)\s", re.I)
_TOP_K = re.compile(r"\b(\d{1,3})\b")
_NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_RESULT_NOUNS = {
    "similar", "cases", "images", "results", "matches", "examples", "scans", "patients", "most",
    "closest", "nearest", "more", "other", "look", "lookalikes", "neighbours", "neighbors",
}  # fmt: skip
# Anatomy and findings (what is segmented), as opposed to the words of a request.
_TARGET_WORDS = """
    liver spleen kidney pancreas aorta gallbladder bladder stomach lung heart lesion tumor tumour
    nodule cyst mass mole metastasis metastases vertebra vertebrae prostate thyroid adrenal colon
    bowel intestine esophagus oesophagus trachea brain uterus ovary ovaries artery vein vessel
    calcification stone lymph node muscle bone femur skull duct wall lobe gland abdomen pelvis
    organ spot hepatic renal splenic pancreatic pulmonary cardiac vertebral aortic cystic
    abnormality growth hyperdense hypodense pigmented melanoma nevus nevi naevus keratosis
    carcinoma dermatofibroma
""".split()
_TARGET_WORD = re.compile(
    r"\b(?:" + "|".join(sorted(_TARGET_WORDS, key=len, reverse=True)) + r")(?:e?s)?\b", re.I
)
_ABOUT_IMAGE = re.compile(
    _TARGET_WORD.pattern + r"|\b(?:image|scan|picture|photo|case|slice|volume|mask)s?\b", re.I
)
_CUES = {
    "similar": re.compile(
        r"\b(similar|look[- ]?alikes?|lookalikes?|resembl\w*|comparable|alike|"
        r"cases like|images like|scans like|patients like|like this one|matches|matching|"
        r"archive|database|case index|index)\b",
        re.IGNORECASE,
    ),
    "segment": re.compile(
        r"^(?:segment|outline|highlight|delineate|locate|mark|mask|draw|detect|annotate|circle|"
        r"show|find|where)\b",
        re.IGNORECASE,
    ),
    "help": re.compile(r"^(?:help|help please|please help|usage|commands|instructions)$", re.I),
}
_FOLLOW_UP = re.compile(
    r"^(?:and\s+)?(?:what|how)\s+about\s+(?P<a>.+)$"
    r"|^(?:and(?:\s+also)?|also|now|then|plus|same\s+(?:for|with)|(?:do\s+)?the\s+same\s+"
    r"(?:for|with))\b[\s,]+(?P<b>.+)$",
    re.IGNORECASE,
)
_NEGATED = re.compile(
    r"^(?:(?:please\s+)?(?:don'?t|do\s+not|never|no\s+need\s+to|stop)\b|not\b|no\s+"
    r"(?:the|a|an)\b|except\b|without\b)",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"^(?:no|nope|nah|actually|sorry|oops|wait|hmm+|well|ok(?:ay)?|i mean|rather)$", re.I
)
_YES = re.compile(
    r"^(?:y|yes|yeah|yep|yup|sure|ok(?:ay)?|correct|right|exactly|please do|do it|go ahead|"
    r"the first(?: one)?|first(?: one)?|1|yes,? please|yes,? the first(?: one)?)[.! ]*$",
    re.IGNORECASE,
)
_SECOND = re.compile(r"^(?:(?:no,?\s+)?the second(?: one)?|second(?: one)?|2)[.! ]*$", re.I)
_NO = re.compile(r"^(?:n|no|nope|nah|neither|none|no thanks|cancel|never ?mind)[.! ]*$", re.I)


@dataclass(frozen=True)
class Intent:
    """What one message asks for.

    Attributes:
        kind: one of :data:`INTENTS`.
        targets: ``segment``: referring expressions; ``measure``: what to measure or count
            (empty: the last answer's targets); ``classify``: candidate labels (empty for the
            default label set).
        spacing: pixel spacing (row_mm, col_mm) stated in the message, else None.
        k: number of results for ``similar``.
        note: a remark for the reply (e.g. targets dropped over :data:`MAX_TARGETS`), or "".
        measure: for ``measure``, what was asked: one of :data:`MEASURES`.
        inside: for ``segment`` with two targets: the question was whether the first lies
            inside the second ("is this lesion in the liver?").
        confidence: the score of the intent (cosine similarity to its examples, with the
            grammar's bonus); 1.0 when the grammar alone decided.
        alternatives: for ``clarify``: the best readings, most likely first.
    """

    kind: str
    targets: tuple[str, ...] = ()
    spacing: tuple[float, float] | None = None
    k: int = DEFAULT_SIMILAR
    note: str = ""
    measure: str = ""
    inside: bool = False
    unit: str = ""
    relative: bool = False
    confidence: float = 1.0
    alternatives: tuple[Intent, ...] = field(default=(), compare=False)

    @property
    def labels(self) -> tuple[str, ...]:
        """Candidate labels of a ``classify`` intent (its ``targets``)."""
        return self.targets if self.kind == "classify" else ()


# -- public functions -------------------------------------------------------------------------
def parse_message(
    text: str, *, previous: str | None = None, vocabulary: Iterable[str] | None = None
) -> Intent:
    """Read one user message (already length-checked) into an :class:`Intent`.

    Args:
        text: the message.
        previous: the kind of the last intent acted on; a follow-up that only names a target
            ("and the spleen?") repeats it when it was ``measure``, else segments.
        vocabulary: words the model knows (e.g. ``Segmenter.vocabulary``); they are never
            "corrected" as typos.
    """
    if not isinstance(text, str):
        raise TypeError(f"message must be str, got {type(text).__name__}")
    text, spacing, stated = _find_spacing(" ".join(text.split()))
    spacing_note = ""
    if stated is not None and spacing is None:
        lo, hi = PLAUSIBLE_SPACING_MM
        spacing_note = (
            f"_I did not use the pixel spacing {' × '.join(f'{v:g}' for v in stated)} mm: a "
            f"pixel spacing is between {lo:g} and {hi:g} mm (CT about 0.5-1, dermoscopy about "
            "0.01-0.05)._"
        )
    text, unit = extract_unit(text)
    text = text.strip()
    intent = _parse(text, previous, vocabulary, spacing)
    if unit and intent.kind == "segment" and intent.targets and not intent.inside:
        intent = replace(intent, kind="measure", measure="size")  # "the lesion in cm"
    if unit and intent.kind in ("measure", "segment"):
        intent = replace(intent, unit=unit)
    if spacing_note:
        intent = replace(intent, note=" ".join([spacing_note, intent.note]).strip())
    return intent


def _parse(text: str, previous, vocabulary, spacing) -> Intent:
    if not text.strip(" .!"):
        return Intent("segment", (), spacing)
    goto = _GOTO_SLICE.fullmatch(text.strip(" .!?"))
    if goto:
        return Intent("slice", (), spacing, k=int(goto.group("k")))
    step = _STEP_SLICE.fullmatch(text.strip(" .!?"))
    if step:  # "next slice": k is a step from the slice shown (relative)
        word = (step.group("w") or "").lower()
        if word in ("first", "last"):
            return Intent("slice", (), spacing, k=0 if word == "first" else -1)
        if word:
            return Intent("slice", (), spacing, k=1 if word in ("next", "following") else -1,
                          relative=True)  # fmt: skip
        n = step.group("n") or step.group("n2") or "1"
        n = int(n) if n.isdigit() else _NUMBERS.get(n.lower(), 1)
        direction = (step.group("d") or step.group("d2")).lower()
        back = direction in ("down", "back", "backward", "lower")
        return Intent("slice", (), spacing, k=-n if back else n, relative=True)
    if not re.search(r"[^\W_]", text):  # "?", "??": no words at all
        return Intent("help", (), spacing)
    text, fixes = _correct_typos(text, vocabulary)
    text, negated = _drop_negated(text)
    if text is None:  # every clause is negated: "don't segment the liver"
        return Intent("unknown", (), spacing, note=negated)
    if _EDIT.fullmatch(text.strip(" .!?")):
        return Intent("unknown", (), spacing, note=EDIT_TEXT)
    if _SLICES_WITH.fullmatch(_LEAD.sub("", text.strip(" .!?")).strip()):
        return _finish(_with_arguments("measure", text, 1.0), spacing, fixes)
    follow = _FOLLOW_UP.match(text.strip(" .!?"))
    if follow:
        text = (follow.group("a") or follow.group("b")).strip()
    intent = _read(text, follow_up=follow is not None, previous=previous)
    return _finish(intent, spacing, fixes)


def measure_question(text: str) -> str | None:
    """The target of a size or count question, "" when it names none ("how big is it?"), or
    None when ``text`` is not such a question (grammar only).

    Example:
        >>> measure_question("how many hepatic lesions are there?")
        'hepatic lesions'
        >>> measure_question("how big is it?")
        ''
        >>> measure_question("segment the liver") is None
        True
    """
    found = _measure_grammar(" ".join(extract_spacing(" ".join(str(text).split()))[0].split()))
    return None if found is None else found[0]


def answer_to_question(text: str) -> int | None:
    """Which offered reading a reply to "Did you mean A or B?" picks: 0 ("yes", "the first"),
    1 ("the second"), -1 ("no"), or None when it is not such an answer."""
    text = " ".join(str(text).split())
    if _YES.fullmatch(text):
        return 0
    if _SECOND.fullmatch(text):
        return 1
    if _NO.fullmatch(text):
        return -1
    return None


def extract_spacing(text: str) -> tuple[str, tuple[float, float] | None]:
    """Find a stated pixel spacing ("spacing 0.8 mm", "0.7 x 0.8 mm", "0.8 mm/px", "pixel size
    is 0.7mm").

    Returns:
        The text without the spacing phrase, and (row_mm, col_mm) or None. Values outside
        :data:`PLAUSIBLE_SPACING_MM` are not used (``parse_message`` says so).
    """
    rest, spacing, _ = _find_spacing(text)
    return rest, spacing


def _find_spacing(text: str):
    """(text without the spacing phrase, plausible (row, col) or None, stated values or None)."""
    lo, hi = PLAUSIBLE_SPACING_MM
    for pattern in _SPACING:
        m = pattern.search(text)
        if m is None:
            continue
        scale = {"cm": 10.0, "µm": 1e-3, "μm": 1e-3, "um": 1e-3, "micron": 1e-3, "microns": 1e-3}
        unit = (m.groupdict().get("unit") or "mm").lower()
        row = round(float(m.group(1)) * scale.get(unit, 1.0), 9)
        col = round(float(m.group(2)) * scale.get(unit, 1.0), 9) if m.group(2) else row
        rest = " ".join((text[: m.start()] + " " + text[m.end() :]).split()).strip(" ,;:")
        stated = (row, col) if col != row else (row,)
        if lo <= row <= hi and lo <= col <= hi:
            return rest, (row, col), stated
        return rest, None, stated
    return text, None, None


def extract_unit(text: str) -> tuple[str, str]:
    """Find the unit a size question asks for ("how big is the liver in cm?").

    Returns:
        The text without the unit phrase, and one of :data:`UNITS` ("" when none is named).

    Example:
        >>> extract_unit("what's the liver area in cm2?")
        ("what's the liver area?", 'cm')
    """
    m = _UNIT.search(text)
    if m is None:
        return text, ""
    u = m.group("u").lower()
    if u.startswith(("cubic milli", "mm")):  # mm, mm², mm³
        unit = "mm"
    elif u.startswith(("ml", "cc", "milli" + "lit", "cubic")) or u[-1] in "3³":
        unit = "ml"
    elif u.startswith(("cm", "centi", "square centi")):
        unit = "cm"
    else:
        unit = "mm"
    rest = text[: m.start()] + text[m.end() :]
    return " ".join(rest.split()).replace(" ?", "?"), unit


def split_targets(text: str) -> tuple[str, ...]:
    """Split a request into referring expressions.

    Commas, semicolons, "as well as" and "plus" always separate targets; "and"/"&" separates
    them unless the word before it is a modifier ("the left and right kidneys" is one target).
    Command words ("segment", "show me", "please") are dropped.

    Example:
        >>> split_targets("show me the liver, the spleen and the left and right kidneys")
        ('the liver', 'the spleen', 'the left and right kidneys')
    """
    text = _strip_command(text)
    pieces = re.split(r"\s*(?:[,;]|\bas well as\b|\bplus\b)\s*", text, flags=re.IGNORECASE)
    out: list[str] = []
    for piece in pieces:
        for part in _split_and(piece):
            part = _strip_command(part)
            if part and part.lower() not in (o.lower() for o in out):
                out.append(part)
    return tuple(out)


# -- reading ----------------------------------------------------------------------------------
def _read(text: str, *, follow_up: bool, previous: str | None) -> Intent:
    """The intent of a cleaned message (typos fixed, negated clauses and follow-up words
    dropped), with its arguments."""
    bare = text.strip(" .!")
    scores = _scores(bare)
    if scores is None:  # no sentence model: the grammar decides
        return _read_by_grammar(bare)
    ranked = sorted(scores, key=scores.get, reverse=True)
    best, second = ranked[0], ranked[1]
    confidence = float(scores[best])
    if follow_up and best in ("segment", "unknown", "classify") and _looks_like_target(bare):
        best = "measure" if previous == "measure" else "segment"  # "and the spleen?"
    if best == "unknown" or confidence < MIN_CONFIDENCE:
        if _looks_like_target(bare):  # "the hepar", "spleen?": a target the model may not know
            return _with_arguments("segment", bare, confidence)
        if best in ACTIONS and confidence >= MIN_CONFIDENCE - 0.08 and _ABOUT_IMAGE.search(bare):
            readings = [_with_arguments(k, bare, float(scores[k])) for k in ranked[:2]]
            readings = [r for r in readings if r.kind in ACTIONS]
            if readings:
                return Intent("clarify", confidence=confidence, alternatives=tuple(readings))
        return Intent("unknown", confidence=confidence)
    intent = _with_arguments(best, bare, confidence)
    margin = confidence - float(scores[second])
    if (
        confidence < SURE
        and margin < MIN_MARGIN
        and best in ACTIONS
        and second in ACTIONS
        and {best, second} != {"segment", "measure"}  # both segment the target and measure it
    ):
        other = _with_arguments(second, bare, float(scores[second]))
        if other.kind != intent.kind:
            return Intent("clarify", confidence=confidence, alternatives=(intent, other))
    return intent


def _scores(text: str) -> dict[str, float] | None:
    """Each intent's score: mean cosine of its two nearest examples, plus the grammar's bonus."""
    bank = _exemplar_bank()
    if bank is None:
        return None
    sims = bank.vectors @ sentences.embed_one(neutral_form(text))
    scores = {}
    for kind, rows in bank.rows.items():
        top = np.sort(sims[rows])[-2:]
        scores[kind] = float(top.mean())
    for kind in _grammar_kinds(text):
        if kind in scores:
            scores[kind] += GRAMMAR_BONUS
    return scores


@dataclass(frozen=True)
class _Bank:
    """The example messages embedded: ``vectors[rows[kind]]`` are the examples of ``kind``."""

    vectors: np.ndarray  # (N, D) float32, unit rows
    rows: dict[str, np.ndarray]


_bank_lock = threading.Lock()
_bank: list[_Bank | None] = []


def _exemplar_bank() -> _Bank | None:
    """The examples of :data:`vlseg.chat.exemplars.EXEMPLARS`, embedded once per process (in
    their neutral form); None without the sentence model."""
    if not _bank:
        with _bank_lock:
            if not _bank:
                _bank.append(_embed_exemplars() if sentences.available() else None)
    return _bank[0]


def _embed_exemplars() -> _Bank:
    from .exemplars import EXEMPLARS

    texts = [neutral_form(t) for kind in EXEMPLARS for t in EXEMPLARS[kind]]
    kinds = np.asarray([kind for kind in EXEMPLARS for _ in EXEMPLARS[kind]])
    vectors = np.concatenate([sentences.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    return _Bank(vectors, {kind: np.flatnonzero(kinds == kind) for kind in EXEMPLARS})


def warm_up() -> bool:
    """Load the sentence model and embed the examples now (the first message would otherwise
    wait for it); True when the model is available."""
    return _exemplar_bank() is not None


def neutral_form(text: str) -> str:
    """``text`` with anatomy and finding words replaced by "thing", as it is embedded: the
    intent lies in how a request is put ("how big is the ...", "outline the ..."), and the
    sentence model would otherwise weigh the organ named as much as the request.

    Example:
        >>> neutral_form("how big is the hepatic lesion?")
        'how big is the thing?'
    """
    out = _TARGET_WORD.sub("thing", text)
    return re.sub(r"\bthing(?:\s+thing)+\b", "thing", out)


def _grammar_kinds(text: str) -> set[str]:
    """The intents whose grammar recognises the form of ``text``."""
    bare = _LEAD.sub("", text.strip(" ?.!")).strip()
    kinds = {k for k, cue in _CUES.items() if cue.search(bare)}
    if _WHICH_IS_SUP.match(bare) or _WHICH_X_IS_SUP.match(bare) or _INSIDE.match(bare):
        kinds.add("segment")  # "what is the largest lesion?", "is this lesion in the liver?"
    elif _looks_like_target(bare) and not _EITHER.search(bare):
        kinds.add("segment")  # a noun phrase: "the dark lesion on the left"
    if _measure_grammar(text) is not None:
        kinds.add("measure")
    if _classify_grammar(text) is not None:
        kinds.add("classify")
    return kinds


def _read_by_grammar(text: str) -> Intent:
    """The intent without the sentence model: the grammar's forms, else segmentation."""
    kinds = _grammar_kinds(text)
    if "help" in kinds or re.fullmatch(r"(?:hi|hello|hey|what can you do)\W*", text, re.I):
        return Intent("help")
    for kind in ("similar", "measure", "classify"):
        if kind in kinds:
            return _with_arguments(kind, text, 1.0)
    return _with_arguments("segment", text, 1.0)


def _with_arguments(kind: str, text: str, confidence: float) -> Intent:
    """An intent of ``kind`` with the arguments the grammar reads in ``text``."""
    if kind == "measure":
        found = _measure_grammar(text)
        if found is None:  # a paraphrase the grammar does not know: keep the nouns
            target, quantity = " ".join(_MEASURE_WORDS.sub(" ", text).split()), "size"
            target = _strip_command(re.sub(r"^(?:what|which)\b(?:'s)?", "", target.strip()))
            target = "" if _PRONOUN.fullmatch(target) else target
        else:
            target, quantity = found
        targets = split_targets(target) if target else ()
        targets = tuple(t for t in targets if not _PRONOUN.fullmatch(t))
        return Intent("measure", targets, measure=quantity, confidence=confidence)
    if kind == "classify":
        inside = _inside_question(text)
        if inside is not None:  # "is this lesion in the liver?" asks where, not what
            return Intent("segment", inside, inside=True, confidence=confidence)
        labels = _classify_grammar(text)
        return Intent("classify", labels or (), confidence=confidence)
    if kind == "similar":
        return Intent("similar", k=_top_k(text), confidence=confidence)
    if kind == "segment":
        inside = _inside_question(text)
        if inside is not None:
            return Intent("segment", inside, inside=True, confidence=confidence)
        return Intent("segment", _segment_targets(text), confidence=confidence)
    return Intent(kind, confidence=confidence)


def _finish(intent: Intent, spacing, fixes: dict[str, str]) -> Intent:
    """Spacing, the target cap and the typo note."""
    notes = []
    targets = intent.targets
    if intent.kind in ("segment", "measure") and len(targets) > MAX_TARGETS:
        notes.append(f"I segmented the first {MAX_TARGETS} of {len(targets)} targets.")
        targets = targets[:MAX_TARGETS]
    if intent.kind in ("segment", "measure", "classify") and fixes:
        used = [(a, b) for a, b in fixes.items() if any(re.search(rf"\b{b}\b", t) for t in targets)]
        if used:
            read = ", ".join(f"*{a}* as *{b}*" for a, b in used)
            notes.append(f"_I read {read}._")
    alternatives = tuple(_finish(a, spacing, fixes) for a in intent.alternatives)
    note = " ".join([intent.note, *notes]).strip()
    return replace(intent, targets=targets, spacing=spacing, note=note, alternatives=alternatives)


# -- grammar per intent -----------------------------------------------------------------------
def _measure_grammar(text: str) -> tuple[str, str] | None:
    """(target, quantity) of a size or count question; target "" when it names none."""
    bare = text.strip(" ?.!")
    m = _SLICES_WITH.fullmatch(_LEAD.sub("", bare).strip())
    if m:  # "how many slices have lesions?", "on which slices is the liver?"
        return _strip_command(m.group("x") or m.group("y")), "slices"
    prev = None
    while prev != bare:
        prev = bare
        bare = _LEAD.sub("", bare).strip()
        bare = _MEASURE_LEAD.sub("", bare).strip()
    bare = _TAIL.sub("", bare).strip() if not bare.lower().endswith((" is", " are")) else bare
    m = _MEASURE.fullmatch(bare)
    if m is None:
        m = _MEASURE.fullmatch(_TAIL.sub("", bare).strip())
        if m is None:
            return None
    words = next(g for g in m.group("qa", "qb", "qc", "qe", "qd") if g is not None)
    target = next((g for g in m.group("a", "b", "c", "e", "d") if g is not None), "")
    if m.group("e") is not None and _MEASURE_WORDS.search(m.group("e")):
        return None  # "what is the size" handled above; this is some other sentence
    target = re.sub(r"^(?:its|their|the total)\s+", "", target.strip(), flags=re.I)
    target = _strip_command(target)
    target = re.sub(r"\s+(?:is|are)$", "", target, flags=re.I)
    quantity = next((q for q, pat in _QUANTITY if pat.search(words)), "size")
    if _MEASURE_WORDS.fullmatch(target or "x"):
        target = ""
    return ("" if _PRONOUN.fullmatch(target) else target), quantity


def _classify_grammar(text: str) -> tuple[str, ...] | None:
    """Candidate labels for a classification request, () for the defaults, None if the
    message has no classification form."""
    bare = _LEAD.sub("", text.strip()).strip(" .!")
    if _CLASSIFY_OPEN.match(bare):
        m = _CLASSIFY_AMONG.search(bare)
        return _split_labels(m.group(1)) if m else ()
    m = _IS_IT.match(bare)
    if m:
        return _split_labels(m.group("x"))
    if re.search(r":", bare):
        return _split_labels(bare.split(":", 1)[1])
    if _EITHER.search(bare.rstrip("?")) and len(bare.split()) <= 8:  # "melanoma or nevus?"
        return _split_labels(bare)
    return None


def _split_labels(text: str) -> tuple[str, ...]:
    parts = re.split(r"\s*(?:,|;|/|\bor\b|\bversus\b|\bvs\.?)\s*", text.strip(" ?.!"), flags=re.I)
    out: list[str] = []
    for p in parts:
        p = re.sub(rf"^(?:{_DETERMINERS}|or)\s+", "", p.strip(), flags=re.I).strip(" ?.!")
        p = re.sub(r"\s+(?:here|in this image|in the image)$", "", p, flags=re.I)
        if p.lower() in ("not", "something else", "neither", "other", "what", ""):
            continue
        if p.lower() not in (o.lower() for o in out):
            out.append(p)
    return tuple(out)


def _inside_question(text: str) -> tuple[str, str] | None:
    """("the lesion", "the liver") for "is this lesion in the liver?", else None."""
    m = _INSIDE.match(text.strip(" ?.!"))
    if m is None:
        return None
    x = re.sub(r"^(?:this|that|these|those)\b", "the", m.group("x").strip(), flags=re.I)
    if x.lower() in ("it", "they", "the"):
        return None
    y = _strip_command(m.group("y"))
    if not y or _EITHER.search(y):
        return None
    return x, y


def _segment_targets(text: str) -> tuple[str, ...]:
    bare = _LEAD.sub("", text.strip(" ?.!")).strip()
    for pattern in (_SHOW_WHERE, _WHICH_IS_SUP):
        m = pattern.match(bare)
        if m:
            bare = m.group("x")
    bare = _strip_command(bare)
    m = _WHICH_X_IS_SUP.match(bare)
    if m:
        noun = re.sub(r"^(?:the|a|an)\s+", "", m.group("x"), flags=re.I)
        bare = f"the {m.group('s')} {noun}"
    bare = re.sub(
        r"\b(biggest|tiniest)\b", lambda w: _SYNONYM_SUP[w.group(1).lower()], bare, flags=re.I
    )
    return split_targets(bare)


def _top_k(text: str) -> int:
    m = _TOP_K.search(text)
    if m:
        k = int(m.group(1))
    else:
        words = re.findall(r"[a-z]+", text.lower())
        k = next(
            (
                _NUMBERS[w]
                for w, after in zip(words, [*words[1:], ""], strict=True)
                if w in _NUMBERS and after in _RESULT_NOUNS
            ),
            DEFAULT_SIMILAR,
        )
    return max(1, min(k, MAX_SIMILAR))


def _looks_like_target(text: str) -> bool:
    """A short noun phrase ("the hepar", "spleen?", "left kidney please") rather than a
    sentence: what a user types to name a target."""
    words = re.findall(r"[\w'-]+", _strip_command(text).lower())
    if not words or len(words) > 6:
        return False
    if words[0] in _NOT_NOUN_START:
        return False
    head = words[-1]
    starts = re.match(rf"{_DETERMINERS}$|left$|right$|both$", words[0])
    known = head in LEXICON or head.rstrip("s") in LEXICON
    return bool(starts and len(words) > 1) or known


_NOT_NOUN_START = set(
    """
    i you we he she they it me my your what how why who when which whose whom do does did can
    could would will should shall may might must is are was were am be tell write play order
    book send give let make sing translate explain recommend
    """.split()
)


# -- text clean-up ----------------------------------------------------------------------------
def _correct_typos(text: str, vocabulary: Iterable[str] | None) -> tuple[str, dict[str, str]]:
    """``text`` with slang expanded and misspelt command/anatomy words corrected, and the
    corrections made (misspelling -> word)."""
    known = sentences.known_words() if sentences.available() else frozenset()
    model_words = {w.lower() for w in vocabulary} if vocabulary is not None else set()
    fixes: dict[str, str] = {}

    def fix(m: re.Match) -> str:
        word = m.group(0)
        low = word.lower()
        if low in _SLANG:
            return _SLANG[low]
        stem = low.split("'")[0]
        if "'" in low or low in known or low in model_words or len(low) < 3:
            return word
        if len(low) == 3:  # "mny": only to the grammar's own short words
            near = [w for w in _SHORT_WORDS if _typo_distance(low, w, 1) <= 1]
            if len(near) == 1:
                fixes[low] = near[0]
                return near[0]
            return word
        if any(stem == w or _inflected(stem, w) for w in (*LEXICON, *_lexical_stems(stem))):
            return word
        match = _nearest_word(low)
        if match is None:
            return word
        fixes[low] = match
        return match

    return re.sub(r"[A-Za-z][A-Za-z']*", fix, text), fixes


_SHORT_WORDS = ("many", "what", "show", "find", "help", "size", "mark", "mask", "draw", "how")


def _nearest_word(word: str) -> str | None:
    """The one word of :data:`LEXICON` within one typo of ``word`` (two from a word of 8
    letters or more), or None when there is none or several."""
    limit = 1 if len(word) < 8 else 2
    best: list[str] = []
    best_d = limit + 1
    for w in LEXICON:
        if abs(len(w) - len(word)) > limit:
            continue
        d = _typo_distance(word, w, limit)
        if d < best_d:
            best, best_d = [w], d
        elif d == best_d:
            best.append(w)
    return best[0] if len(best) == 1 else None


def _typo_distance(a: str, b: str, limit: int) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from ``a`` to ``b``; anything
    over ``limit`` reads as ``limit + 1``."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


def _inflected(word: str, base: str) -> bool:
    """Whether ``word`` is ``base`` with an ending ("segmented", "kidneys", "outlining")."""
    stems = (base, base[:-1]) if base.endswith("e") else (base,)
    return any(word == stem + end for stem in stems for end in _ENDINGS)


_ENDINGS = ("s", "es", "d", "ed", "ing", "ation", "ations", "al", "er", "ers", "ly")


def _lexical_stems(word: str) -> tuple[str, ...]:
    """Known words that ``word`` may inflect ("segmented" -> "segment")."""
    known = sentences.known_words() if sentences.available() else frozenset()
    return tuple(word[:i] for i in range(3, len(word)) if word[:i] in known)


def _drop_negated(text: str) -> tuple[str | None, str]:
    """``text`` without its negated clauses ("don't segment the liver, segment the spleen" ->
    "segment the spleen") and fillers ("no, I meant the spleen"). (None, note) when every
    clause is negated."""
    if not re.search(r"\b(?:not|don'?t|never|no|nope|except|without|stop|actually)\b", text, re.I):
        return text, ""
    clauses = [
        c
        for c in re.split(r"\s*(?:[,;]|\bbut\b|\band\s+(?=not\b|don'?t\b))\s*", text, flags=re.I)
        if c.strip()
    ]
    kept = [c for c in clauses if not _NEGATED.match(c) and not _FILLER.fullmatch(c.strip())]
    if len(kept) == len(clauses):
        return text, ""
    if not kept:
        if any(_NEGATED.match(c) for c in clauses):
            return None, "Understood, I won't. What should I do instead?"
        return text, ""
    return ", ".join(kept), ""


def _strip_command(text: str) -> str:
    return strip_request(text, keep=False)


def _split_and(text: str) -> list[str]:
    parts = re.split(r"\s+(?:and|&)\s+", text, flags=re.IGNORECASE)
    if len(parts) == 1:
        return parts
    merged = [parts[0]]
    for part in parts[1:]:
        last_word = merged[-1].split()[-1].lower() if merged[-1].split() else ""
        if last_word in _MODIFIERS or not merged[-1].strip():
            merged[-1] = f"{merged[-1]} and {part}".strip()
        else:
            merged.append(part)
    return merged
