"""Read one chat message: what the user wants (intent) and what it refers to (targets, labels).

Rule-based on purpose: the grammar of the requests is small ("segment X", "X and Y", "is it X or
Y?", "find similar cases"), and rules fail in ways a user can read in the reply.

Example:
    >>> parse_message("segment the liver and the hepatic lesion").targets
    ('the liver', 'the hepatic lesion')
    >>> parse_message("both kidneys").targets
    ('both kidneys',)
    >>> intent = parse_message("is it a melanoma or a nevus?")
    >>> intent.kind, intent.targets
    ('classify', ('melanoma', 'nevus'))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INTENTS = ("segment", "classify", "similar", "help")
MAX_TARGETS = 8  # segmentation targets per message
MAX_SIMILAR = 20  # retrieval results per message
DEFAULT_SIMILAR = 5

# Words that modify a noun that comes later: "the left and right kidneys" is one target.
_MODIFIERS = {
    "left", "right", "upper", "lower", "anterior", "posterior", "medial", "lateral", "superior",
    "inferior", "central", "peripheral", "proximal", "distal", "small", "smaller", "smallest",
    "large", "larger", "largest", "big", "bigger", "biggest", "tiny", "bright", "dark", "round",
    "hyperdense", "hypodense", "isodense", "dense", "light", "pale", "irregular", "regular",
}  # fmt: skip
_DETERMINERS = r"(?:the|a|an|both|all|any|each|every|its|their|this|that|these|those|some)"

_HELP = re.compile(
    r"(help|h|\?+|commands|usage|instructions|hi|hello|hey|what can you do|what do you do|"
    r"how does (this|it) work|how (do|can) i use (this|it)|how to use( this| it)?)",
    re.IGNORECASE,
)
_SIMILAR = re.compile(
    r"\b(similar|look[- ]?alikes?|lookalikes?|nearest|retrieve|retrieval|comparable|"
    r"cases like (this|it))\b",
    re.IGNORECASE,
)
_TOP_K = re.compile(r"\b(?:top|first|the)?\s*(\d{1,3})\s+(?:similar|cases|images|results|nearest)",
                    re.IGNORECASE)  # fmt: skip
_CLASSIFY_OPEN = re.compile(
    r"^(?:so,?\s+)?(?:please\s+)?(?:what(?:'s| is)\s+(?:this|it|that|shown|in (?:this|the) image)|"
    r"what do you see|what kind of (?:lesion|image|finding|scan) is (?:this|it)|"
    r"which (?:class|category|diagnosis)|classify|diagnose|diagnosis|categori[sz]e)\b",
    re.IGNORECASE,
)
_CLASSIFY_AMONG = re.compile(r"\b(?:as|among|between|into|:)\s*(.+)$", re.IGNORECASE)
_IS_IT = re.compile(
    r"^(?:so,?\s+)?(?:is|are|could)\s+(?:(?:this|the|that|these|those)\s+(?:lesion|image|"
    r"finding|scan|mass|spot|mole|nodule|tumou?r|region|area|thing|one|case)s?|it|this|that|"
    r"they|these|those)(?:\s+be)?\s+(.+)$",
    re.IGNORECASE,
)
_LEAD = re.compile(
    r"^(?:(?:please|kindly|ok(?:ay)?|now|so|then|hey|also|and|can you|could you|would you|"
    r"will you|i want you to|i'd like you to|i would like you to|help me)\b[\s,]*)+",
    re.IGNORECASE,
)
_VERB = re.compile(
    r"^(?:segment|show(?:\s+me)?|find|highlight|outline|mark|locate|delineate|mask|draw|detect|"
    r"display|point out|where(?:'s|\s+is|\s+are)|is there|are there|identify|label|get)\b\s*"
    r"(?:any\s+|me\s+)?",
    re.IGNORECASE,
)
_TAIL = re.compile(
    r"(?:\s*\b(?:please|for me|(?:in|on) (?:this|the) (?:image|scan|slice|picture|photo)|"
    r"if (?:any|present|there is one))\b|[\s.!?;:,])+$",
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
]


# "how big is the lesion?", "how many lesions are there?", "what is the volume of the liver?",
# "measure it": questions about the size or number of something (answered on volumes).
_MEASURE = re.compile(
    r"^(?:(?:how\s+(?:big|large|small|long|wide|thick|extensive|much\s+volume)|what\s+size|"
    r"what\s+volume)(?:\s+(?:is|are|was|were|does|do))?(?:\s+(?P<a>.*?))?"
    r"(?:\s+(?:measure|take up|occupy))?"
    r"|how\s+many(?:\s+(?P<b>.*?))?(?:\s+(?:are|is)\s+there|\s+do you see|\s+(?:are|is)\s+"
    r"(?:visible|present|shown|seen))?"
    r"|(?:what(?:'s|\s+is|\s+are)\s+)?(?:(?:the|its|their)\s+)?(?:size|volume|diameters?|"
    r"dimensions?|extent|count|number|measurements?)(?:\s+of)?(?:\s+(?P<c>.*?))?"
    r"|(?:measure|count|quantify)(?:\s+(?P<d>.*?))?)$",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"^(?:it|its|they|them|their|this|that|these|those|one|ones)?$", re.I)


def measure_question(text: str) -> str | None:
    """The target of a size or count question, "" when it names none ("how big is it?"), or
    None when ``text`` is not such a question.

    Example:
        >>> measure_question("how many hepatic lesions are there?")
        'hepatic lesions'
        >>> measure_question("how big is it?")
        ''
        >>> measure_question("segment the liver") is None
        True
    """
    bare = " ".join(extract_spacing(" ".join(str(text).split()))[0].split()).strip(" ?.!")
    bare = _LEAD.sub("", bare).strip()
    m = _MEASURE.fullmatch(bare)
    if m is None:
        return None
    target = next((g for g in m.group("a", "b", "c", "d") if g is not None), "")
    target = re.sub(r"^(?:its|their)\s+", "", target.strip(), flags=re.I)
    target = _strip_command(target)
    return "" if _PRONOUN.fullmatch(target) else target


@dataclass(frozen=True)
class Intent:
    """What one message asks for.

    Attributes:
        kind: one of :data:`INTENTS`.
        targets: ``segment``: referring expressions; ``classify``: candidate labels (empty for the
            default label set).
        spacing: pixel spacing (row_mm, col_mm) stated in the message, else None.
        k: number of results for ``similar``.
        note: a remark for the reply (e.g. targets dropped over :data:`MAX_TARGETS`), or "".
    """

    kind: str
    targets: tuple[str, ...] = ()
    spacing: tuple[float, float] | None = None
    k: int = DEFAULT_SIMILAR
    note: str = ""


def parse_message(text: str) -> Intent:
    """Parse one user message (already length-checked) into an :class:`Intent`.

    Segmentation is the default: any message that is not help, classification or retrieval is
    read as one or more referring expressions.
    """
    if not isinstance(text, str):
        raise TypeError(f"message must be str, got {type(text).__name__}")
    text, spacing = extract_spacing(" ".join(text.split()))
    bare = text.strip().rstrip(".!").strip()
    if not bare:
        return Intent("segment", (), spacing)
    if _HELP.fullmatch(bare) or _HELP.fullmatch(bare.rstrip("?!. ")):
        return Intent("help", (), spacing)
    if _SIMILAR.search(bare):
        m = _TOP_K.search(bare)
        k = int(m.group(1)) if m else DEFAULT_SIMILAR
        return Intent("similar", (), spacing, k=max(1, min(k, MAX_SIMILAR)))
    labels = _classify_labels(bare)
    if labels is not None:
        return Intent("classify", labels, spacing)
    targets = split_targets(bare)
    note = ""
    if len(targets) > MAX_TARGETS:
        note = f"I segmented the first {MAX_TARGETS} of {len(targets)} targets."
        targets = targets[:MAX_TARGETS]
    return Intent("segment", targets, spacing, note=note)


def extract_spacing(text: str) -> tuple[str, tuple[float, float] | None]:
    """Find a stated pixel spacing ("spacing 0.8 mm", "0.7 x 0.8 mm", "0.8 mm/px").

    Returns:
        The text without the spacing phrase, and (row_mm, col_mm) or None. Values outside
        (0, 100] mm are ignored.
    """
    for pattern in _SPACING:
        m = pattern.search(text)
        if m is None:
            continue
        row = float(m.group(1))
        col = float(m.group(2)) if m.group(2) else row
        rest = (text[: m.start()] + " " + text[m.end() :]).strip()
        if 0 < row <= 100 and 0 < col <= 100:
            return " ".join(rest.split()), (row, col)
        return " ".join(rest.split()), None
    return text, None


def _classify_labels(text: str) -> tuple[str, ...] | None:
    """Candidate labels for a classification request, () for the defaults, None if not one."""
    if _CLASSIFY_OPEN.match(text):
        m = _CLASSIFY_AMONG.search(text)
        return _split_labels(m.group(1)) if m else ()
    m = _IS_IT.match(text)
    if m:
        return _split_labels(m.group(1))
    return None


def _split_labels(text: str) -> tuple[str, ...]:
    parts = re.split(r"\s*(?:,|;|/|\bor\b|\bversus\b|\bvs\.?)\s*", text.strip(" ?.!"), flags=re.I)
    out: list[str] = []
    for p in parts:
        p = re.sub(rf"^(?:{_DETERMINERS}|or)\s+", "", p.strip(), flags=re.I).strip(" ?.!")
        if p and p.lower() not in (o.lower() for o in out):
            out.append(p)
    return tuple(out)


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


def _strip_command(text: str) -> str:
    prev = None
    text = text.strip()
    while prev != text:  # "please can you segment ..." needs several passes
        prev = text
        text = _LEAD.sub("", text).strip()
        text = _VERB.sub("", text).strip()
        text = _TAIL.sub("", text).strip()
        text = re.sub(r"^(?:and|then|also)\s+", "", text, flags=re.IGNORECASE).strip()
    return text
