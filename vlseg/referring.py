"""Lesion-level and spatial referring: "the largest hepatic lesion", "the second lesion from the
top", "the lesion nearest the aorta", "the most superior lesion", resolved over the connected
components of what the model finds for the plural target.

The model grounds a target ("the hepatic lesions") well but not one instance of it: asked for
"the largest hepatic lesion" it returns every lesion. So such a prompt is answered in two steps:

1. :func:`parse_selector` splits the prompt into a *base* prompt the model answers well ("the
   hepatic lesions") and a *selector* (largest; second from the top; nearest the aorta). It is
   deliberately narrow: a closed list of countable nouns (lesion, tumour, mass, nodule,
   metastasis, spot, cyst), a closed list of selector words, and a closed list of what may come
   before and after the noun phrase; anything else does not parse, and the prompt goes to the
   model unchanged (a false parse costs more than a miss). Words the model handles itself
   ("the left kidney", "the lesion in the left lobe") are never touched.
2. :func:`resolve` picks one connected component of the base answer (8-connectivity on an
   image, 26-connectivity in a volume) and returns a result of the same type holding only it,
   with its measurements recomputed.

Directions. Images are taken in radiological display, as the phantoms and the model's training
images are: for an axial slice the top of the image is anterior and the *patient's* left is on
the image's *right*. "Left" and "right" in a prompt mean the patient's, as in a radiology report
("the leftmost lesion", "the first lesion from the left" are those nearest the patient's left,
i.e. the image's right); say "from the left of the image" (or "the image's left") for the
image's own side. "From the top" / "topmost" count image rows (row 0 first); "front"/"most
anterior" and "back"/"most posterior" are the patient's. "Most superior / cranial" and "most
inferior / caudal" need a volume (a single image has no head-foot axis); "highest / uppermost /
lowest / lowermost" mean superior / inferior in a volume and top / bottom of a 2-D image. An
ordinal without a direction ("the second lesion") counts from the top of an image and from the
most superior slice of a volume. In a volume read from NIfTI or DICOM the patient directions
come from the file's affine; a bare array is taken in the phantoms' convention (slice 0 most
inferior, row 0 anterior, column 0 the patient's right).

What counts as an instance: components smaller than 5 mm (equivalent diameter; a few pixels
when the spacing is unknown) and, in a volume, components on a single slice are the model's
specks, not findings, and are not ranked; for a target named inside an organ ("hepatic",
"liver", "in the right lobe", "renal", ...) the organ is segmented too (same encoded image, no
extra encoder run) and components mostly outside it are not ranked. In a volume the singular
phrasing ("the hepatic lesion") is asked as well, and a component of the plural answer counts
only where the singular one supports it (see :func:`resolve`): slice by slice, the plural prompt
makes the model add a false second lesion on slices that cut one. When these rules leave
nothing, every component is ranked.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .inference import SegmentationResult
from .volume import STRUCTURE_3D, VolumeResult, measure_components

__all__ = [
    "DIRECTIONS",
    "ReferringPlan",
    "Selector",
    "parse_selector",
    "plan_referring",
    "resolve",
]

# -----------------------------------------------------------------------------------------
# grammar

_SINGULAR_TO_PLURAL = {
    "lesion": "lesions",
    "tumour": "tumours",
    "tumor": "tumors",
    "mass": "masses",
    "nodule": "nodules",
    "metastasis": "metastases",
    "spot": "spots",
    "cyst": "cysts",
}
_PLURAL_TO_SINGULAR = {v: k for k, v in _SINGULAR_TO_PLURAL.items()}

_ORDINALS = {
    "first": 1,
    "1st": 1,
    "second": 2,
    "2nd": 2,
    "third": 3,
    "3rd": 3,
    "fourth": 4,
    "4th": 4,
    "fifth": 5,
    "5th": 5,
    "last": -1,
    "second to last": -2,
    "penultimate": -2,
}
_ORD_WORDS = "second to last|penultimate|first|1st|second|2nd|third|3rd|fourth|4th|fifth|5th|last"
_ORD = rf"(?P<ord>{_ORD_WORDS})"

_SIZE_WORDS = {
    "largest": "largest",
    "biggest": "largest",
    "greatest": "largest",
    "most extensive": "largest",
    "smallest": "smallest",
    "tiniest": "smallest",
    "least extensive": "smallest",
}
# plain adjectives on a singular definite noun ("the big lesion") pick the extreme one
_SIZE_ADJECTIVES = {
    "big": "largest",
    "bigger": "largest",
    "large": "largest",
    "larger": "largest",
    "small": "smallest",
    "smaller": "smallest",
    "little": "smallest",
    "tiny": "smallest",
}
_EXTREMES = {
    "topmost": "top",
    "bottommost": "bottom",
    "uppermost": "up",
    "highest": "up",
    "lowermost": "down",
    "lowest": "down",
    "leftmost": "patient_left",
    "rightmost": "patient_right",
    "most left": "patient_left",
    "most right": "patient_right",
    "most superior": "superior",
    "most cranial": "superior",
    "most cephalad": "superior",
    "most inferior": "inferior",
    "most caudal": "inferior",
    "most anterior": "anterior",
    "most posterior": "posterior",
}
_DISTANCE_WORDS = {
    "nearest": "nearest",
    "closest": "nearest",
    "farthest": "farthest",
    "furthest": "farthest",
    "most distant": "farthest",
}
_OPPOSITE = {
    "top": "bottom",
    "bottom": "top",
    "up": "down",
    "down": "up",
    "image_left": "image_right",
    "image_right": "image_left",
    "patient_left": "patient_right",
    "patient_right": "patient_left",
    "anterior": "posterior",
    "posterior": "anterior",
    "superior": "inferior",
    "inferior": "superior",
}
DIRECTIONS = tuple(_OPPOSITE)

_SEL_SIZE = re.compile(
    rf"^(?:{_ORD} )?(?P<w>{'|'.join(sorted(_SIZE_WORDS, key=len, reverse=True))})(?: |$)"
)
_SEL_ADJ = re.compile(rf"^(?P<w>{'|'.join(_SIZE_ADJECTIVES)})(?: |$)")
_SEL_EXT = re.compile(
    rf"^(?:{_ORD} )?(?P<w>{'|'.join(sorted(_EXTREMES, key=len, reverse=True))})(?: |$)"
)
_SEL_DIST = re.compile(rf"^(?:{_ORD} )?(?P<w>{'|'.join(_DISTANCE_WORDS)})(?: |$)")
_SEL_ORD = re.compile(rf"^{_ORD}(?: |$)")

# what may follow the noun: where it is, the selector's own tail, courtesies
_PLACE = (
    r"(?:in|of|within|inside|on) (?:the )?(?:(?:right|left) )?(?:hepatic )?"
    r"(?:lobe of the liver|lobe|liver|kidney|spleen)"
)
_VIEW = r"(?:on|in) (?:this|the) (?:slice|image|scan|volume|ct|study|series)"
_POST = rf"(?: (?:{_PLACE}|{_VIEW}))*"
_SIDE = (
    r"(?P<{n}_qual>image's |patient's )?(?P<{n}>top|bottom|left|right|front|back)"
    r"(?: (?:side|edge|end))?(?P<{n}_img> of the (?:image|slice|screen|picture|scan))?"
)
_REF = r"(?P<ref>(?:the )?[a-z][a-z'-]*(?: [a-z][a-z'-]*){0,3}?)"
_TAIL_SEL = (
    r"(?: (?:"
    + r"(?:counting )?from the "
    + _SIDE.format(n="dir")
    + r"|(?:(?:that is|which is|that's|lying|that lies|which lies) )?(?:the )?"
    + r"(?P<relside>nearest|closest|farthest|furthest|most distant) (?:to |from )?the "
    + _SIDE.format(n="rdir")
    + r"|(?:(?:that is|which is|that's|lying|that lies|which lies) )?(?:the )?"
    + r"(?P<rel>nearest|closest|farthest|furthest|most distant)(?: to| from)? "
    + _REF
    + r"|(?P<prep>to|from) "
    + _REF.replace("?P<ref>", "?P<ref2>")
    + r"))?"
)
_SUFFIX = re.compile(rf"^(?P<pre>{_POST}){_TAIL_SEL}(?P<post>{_POST})(?P<tail> please| for me)?$")

# words of a request that may come before the noun phrase ("can you show me ...")
_FRAME_WORDS = frozenset(
    """please kindly can could would will you segment outline show me highlight find mark locate
    delineate contour draw the of around where is what which point out i i'd need want like a
    an mask give get select identify measure trace circle label display detect pick see to how
    big large just now also and then""".split()
)
# words that cannot be modifiers of the noun (they would change what it means)
_STOP = frozenset(
    """and or but not no nor of in on at to from with without than the a an this that these
    those other another each every all both any some one two three four five only same most
    least more less very which who whose what where when is are was were be""".split()
)
_ORGAN_WORDS = (
    ("the liver", ("liver", "hepatic", "lobe")),
    ("the kidneys", ("kidney", "renal")),
    ("the spleen", ("spleen", "splenic")),
)
_WORD = re.compile(r"^[a-z][a-z'-]*$")


@dataclass(frozen=True)
class Selector:
    """One instance picked out of a plural target.

    Attributes:
        kind: ``"size"``, ``"position"`` or ``"distance"``.
        order: size: ``"largest"`` / ``"smallest"``; position: one of ``DIRECTIONS`` (the side
            counted from: ``"top"``, ``"patient_left"``, ``"superior"``, ...; ``"up"`` /
            ``"down"`` are superior / inferior in a volume and top / bottom of an image);
            distance: ``"nearest"`` / ``"farthest"``.
        rank: 1 for the first (the largest, the topmost, the nearest), 2 for the second, ...;
            -1 for the last, -2 for the second to last.
        base: the prompt for every instance ("the hepatic lesions"), in the words of the
            original (same request frame, the noun in the plural).
        text: the original prompt.
        noun: the instance noun, singular, for messages ("hepatic lesion").
        reference: distance selectors: the prompt of the structure measured from ("the
            aorta"); else None.
        within: the organ the instances lie in when the prompt names one ("the liver" for a
            hepatic lesion); components mostly outside it are not ranked. None: no such filter.
        singular: the base prompt with the noun in the singular ("the hepatic lesion"), asked
            too in volumes (see :func:`resolve`'s ``support``).
    """

    kind: str
    order: str
    rank: int
    base: str
    text: str
    noun: str
    reference: str | None = None
    within: str | None = None
    singular: str = ""

    def describe(self) -> str:
        """A few words for people, e.g. "largest (rank 2)", "nearest the aorta"."""
        what = self.order.replace("_", " ")
        if self.kind == "position":
            what = f"from the {what}"
        elif self.kind == "distance":
            what = f"{what} {'to' if self.order == 'nearest' else 'from'} {self.reference}"
        return what if self.rank == 1 else f"{what} (rank {self.rank})"


def _normalise(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"[,;:!?.\"()]+", " ", t)
    t = re.sub(r"\b(left|right|top|bottom|upper|lower)-most\b", r"\1most", t)
    t = re.sub(r"\b(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th)-(?=[a-z])", r"\1 ", t)
    t = re.sub(r"\bsecond-to-last\b", "second to last", t)
    t = re.sub(r"\b(most|least)-(?=[a-z])", r"\1 ", t)
    return re.sub(r"\s+", " ", t).strip()


def _plural(noun_phrase: str) -> str:
    words = noun_phrase.split()
    words[-1] = _SINGULAR_TO_PLURAL.get(words[-1], words[-1] + "s")
    return " ".join(words)


def _singular(noun_phrase: str) -> str:
    words = noun_phrase.split()
    words[-1] = _PLURAL_TO_SINGULAR.get(words[-1], words[-1].removesuffix("s"))
    return " ".join(words)


def _organ(words: list[str]) -> str | None:
    found = [prompt for prompt, keys in _ORGAN_WORDS if any(w in keys for w in words)]
    if len(found) != 1:
        return None
    if found[0] == "the kidneys":
        for side in ("right", "left"):
            if f"{side} kidney" in " ".join(words):
                return f"the {side} kidney"
    return found[0]


def _side(m: re.Match, name: str) -> str:
    side = m.group(name)
    image = bool(m.group(f"{name}_img")) or m.group(f"{name}_qual") == "image's "
    if side in ("top", "bottom"):
        return side
    if side == "front":
        return "anterior"
    if side == "back":
        return "posterior"
    return f"image_{side}" if image else f"patient_{side}"


def _ref_ok(ref: str) -> bool:
    words = ref.split()
    if words[0] == "the":
        words = words[1:]
    if not words or any(not _WORD.match(w) for w in words):
        return False
    if any(w in _STOP for w in words):
        return False
    if len(words) == 1 and words[0] in ("top", "bottom", "left", "right", "front", "back"):
        return False  # a side of the image, not a structure (see the direction forms)
    if any(w in _SINGULAR_TO_PLURAL or w in _PLURAL_TO_SINGULAR or w == "one" for w in words):
        return False  # "nearest the other lesion": an instance measured from another
    selector_words = set(_SIZE_WORDS) | set(_EXTREMES) | set(_DISTANCE_WORDS) | set(_ORDINALS)
    return not any(w in selector_words for w in words)


def parse_selector(text: str, *, default: str | None = None) -> Selector | None:
    """Split a prompt into a base prompt and an instance selector, or None when it names no
    single instance by size, position or distance (most prompts).

    Examples:
        "the largest hepatic lesion" -> base "the hepatic lesions", size / largest;
        "segment the second lesion from the top please" -> base "segment the lesions please",
        position / top, rank 2; "the lesion nearest the aorta" -> base "the lesions", distance /
        nearest, reference "the aorta"; "the left kidney", "the large bowel", "the lesion in
        the left lobe", "the largest organ", "the largest lesions" -> None.

    Args:
        text: the prompt.
        default: the base prompt for noun-less selectors ("the big one", "the second one from
            the top"), e.g. the previous prompt of a conversation ("the hepatic lesions");
            None: those do not parse.
    """
    if not isinstance(text, str):
        return None
    norm = _normalise(text)
    toks = norm.split()
    if not toks or len(toks) > 24:
        return None
    nouns = [i for i, w in enumerate(toks) if w in _SINGULAR_TO_PLURAL or w in _PLURAL_TO_SINGULAR]
    ones = [i for i, w in enumerate(toks) if w == "one"]
    of_form = False
    if len(nouns) == 1 and toks[nouns[0]] in _SINGULAR_TO_PLURAL:
        head = nouns[0]
    elif len(nouns) == 1 and len(ones) == 0:
        # "the largest of the lesions": the selector, then "of/among [all] the ... lesions"
        head, of_form = nouns[0], True
    elif len(nouns) == 1 and len(ones) == 1 and ones[0] < nouns[0]:
        head, of_form = nouns[0], True  # "the largest one of the lesions"
    elif not nouns and len(ones) == 1 and default is not None:
        head = ones[0]  # "the big one" with a default target
    else:
        return None
    if of_form:
        return _parse_of_form(text, toks)

    # the determiner and the words between it and the noun
    i = head - 1
    while i >= 0 and toks[i] not in ("the", "a", "an") and head - i <= 6:
        i -= 1
    if i >= 0 and toks[i] in ("the", "a", "an"):
        det, prefix, mid = toks[i], toks[:i], toks[i + 1 : head]
    else:
        det, prefix, mid = None, [], toks[:head]
        while mid and mid[0] in _FRAME_WORDS and not _starts_selector(" ".join(mid)):
            prefix.append(mid.pop(0))
    if det in ("a", "an"):
        return None  # "a largest lesion" is no definite instance
    if not all(w in _FRAME_WORDS for w in prefix):
        return None
    mid_s = " ".join(mid)
    sel = _mid_selector(mid_s)
    if sel is None:
        return None
    kind, order, rank, premods = sel
    if len(premods) > 4 or any(not _WORD.match(w) or w in _STOP for w in premods):
        return None
    if any(_starts_selector(w) for w in premods):
        return None  # two selectors ("the largest smallest lesion")
    suffix = " ".join(toks[head + 1 :])
    m = _SUFFIX.match((" " + suffix) if suffix else "")
    if m is None:
        return None
    reference = None
    if m.group("dir"):  # "the second lesion from the top"
        side = _side(m, "dir")
        if kind == "ordinal":
            kind, order = "position", side
        elif kind == "distance" and rank == 1:  # "the farthest lesion from the top"
            kind, order = "position", side if order == "nearest" else _OPPOSITE[side]
        else:
            return None
    elif m.group("relside"):  # "the lesion nearest the top"
        if kind not in (None, "ordinal"):
            return None
        order = _side(m, "rdir")
        if _DISTANCE_WORDS[m.group("relside")] == "farthest":
            order = _OPPOSITE[order]
        kind = "position"
    elif m.group("rel"):  # "the lesion nearest (to) the aorta"
        if kind not in (None, "ordinal") or not _ref_ok(m.group("ref")):
            return None
        kind, order, reference = "distance", _DISTANCE_WORDS[m.group("rel")], m.group("ref")
    elif m.group("prep"):  # "the nearest lesion to the aorta", "the farthest lesion from ..."
        if kind != "distance" or not _ref_ok(m.group("ref2")):
            return None
        if m.group("prep") != ("to" if order == "nearest" else "from"):
            return None
        reference = m.group("ref2")
    elif kind == "distance":
        return None  # "the nearest lesion": to what?
    elif kind == "ordinal":  # "the second lesion": counted from the top / most superior
        kind, order = "position", "up"
    if kind is None:
        return None
    if kind == "size" and order in _SIZE_ADJECTIVES and det != "the":
        return None
    if kind == "size" and order in _SIZE_ADJECTIVES:
        order = _SIZE_ADJECTIVES[order]
    if reference is not None and not reference.startswith("the "):
        reference = "the " + reference
    posts = (m.group("pre") + m.group("post")).strip()
    noun_words = premods + ([] if toks[head] == "one" else [toks[head]])
    tail = [posts] if posts else []
    if toks[head] == "one":
        base = " ".join([*prefix, default.strip(), *tail])
        noun = _singular(_strip_det(default.strip()))
        singular = " ".join([*prefix, "the", noun, *tail])
        context = noun.split()
    else:
        singular = " ".join([*prefix, "the", *premods, toks[head], *tail])
        phrase = " ".join(["the", *premods, _SINGULAR_TO_PLURAL[toks[head]]])
        if prefix[-1:] == ["is"]:  # "where is the largest lesion" -> "where are the lesions"
            prefix = [*prefix[:-1], "are"]
        base = " ".join([*prefix, phrase, *tail])
        noun = " ".join(noun_words)
        context = noun_words + posts.split()
    if m.group("tail"):
        base += m.group("tail")
        singular += m.group("tail")
    return Selector(
        kind=kind,
        order=order,
        rank=rank,
        base=_punctuated(base, text),
        text=text.strip(),
        noun=noun,
        reference=reference,
        within=_organ(context),
        singular=_punctuated(singular, text),
    )


def _punctuated(base: str, text: str) -> str:
    """The base prompt with the original's closing question mark (the text tower reads it)."""
    return base + "?" if text.strip().endswith("?") else base


def _strip_det(phrase: str) -> str:
    words = phrase.lower().split()
    while words and words[0] in ("the", "all", "a", "an"):
        words = words[1:]
    return " ".join(words) or "finding"


def _starts_selector(s: str) -> bool:
    if s.split(" ", 1)[0] in ("most", "least"):
        return True
    return any(p.match(s) for p in (_SEL_SIZE, _SEL_ADJ, _SEL_EXT, _SEL_DIST, _SEL_ORD))


def _mid_selector(mid: str):
    """(kind, order, rank, premodifiers) of the words between the determiner and the noun;
    kind "ordinal" for a bare ordinal ("second"), None when they hold no selector; None when
    they cannot be parsed."""
    for pattern, kind, table in (
        (_SEL_SIZE, "size", _SIZE_WORDS),
        (_SEL_EXT, "position", _EXTREMES),
        (_SEL_DIST, "distance", _DISTANCE_WORDS),
    ):
        m = pattern.match(mid)
        if m:
            rank = _ORDINALS[m.group("ord")] if m.group("ord") else 1
            if rank < 0 and kind != "position":
                return None  # "the last largest lesion"
            return kind, table[m.group("w")], rank, mid[m.end() :].split()
    m = _SEL_ADJ.match(mid)
    if m:
        return "size", m.group("w"), 1, mid[m.end() :].split()
    m = _SEL_ORD.match(mid)
    if m:  # a bare ordinal: its direction follows the noun, or is the default
        return "ordinal", None, _ORDINALS[m.group("ord")], mid[m.end() :].split()
    if mid.split(" ", 1)[0] in ("most", "least"):
        return None  # "the most hypodense lesion": a degree the model reads, not a rank
    return None, None, 1, mid.split()


_OF_FORM = re.compile(
    r"^(?P<prefix>(?:[a-z'-]+ )*?)the (?P<sel>(?:(?:"
    + _ORD_WORDS
    + r") )?(?:"
    + "|".join(sorted([*_SIZE_WORDS, *_EXTREMES], key=len, reverse=True))
    + r"))(?: one)? (?:of|among) (?:all )?(?:the )?"
    + r"(?P<np>(?:(?!(?:of|among|the|all) )[a-z][a-z'-]* ){0,4}?)(?P<noun>"
    + "|".join(_PLURAL_TO_SINGULAR)
    + r")(?P<rest>(?: .*)?)$"
)


def _parse_of_form(text: str, toks: list[str]) -> Selector | None:
    """ "the largest (one) of the hepatic lesions", "the uppermost among the lesions": a size
    or extreme selector, then the plural target."""
    norm = " ".join(toks)
    m = _OF_FORM.match(norm)
    if m is None:
        return None
    prefix = m.group("prefix").split()
    if not all(w in _FRAME_WORDS for w in prefix):
        return None
    sel = m.group("sel")
    premods = m.group("np").split()
    if any(not _WORD.match(w) or w in _STOP for w in premods):
        return None
    parsed = _mid_selector(sel)
    if parsed is None or parsed[0] is None or parsed[3]:
        return None  # the selector must be the whole phrase ("the largest"), no modifiers
    kind, order, rank, _ = parsed
    if kind not in ("size", "position"):
        return None
    singular = " ".join([*prefix, "the", *premods, _PLURAL_TO_SINGULAR[m.group("noun")]])
    if prefix[-1:] == ["is"]:
        prefix = [*prefix[:-1], "are"]
    rest = m.group("rest")
    post = re.match(rf"^(?P<post>{_POST})(?P<tail> please| for me)?$", rest)
    if post is None:
        return None
    noun_words = [*premods, _PLURAL_TO_SINGULAR[m.group("noun")]]
    base = " ".join([*prefix, "the", *premods, m.group("noun")]) + post.group("post")
    base += post.group("tail") or ""
    singular += post.group("post") + (post.group("tail") or "")
    return Selector(
        kind=kind,
        order=order,
        rank=rank,
        base=_punctuated(base, text),
        text=text.strip(),
        noun=" ".join(noun_words),
        within=_organ(noun_words + post.group("post").split()),
        singular=_punctuated(singular, text),
    )


# -----------------------------------------------------------------------------------------
# resolution

_MIN_DIAMETER_MM = 5.0  # smaller components are specks, not instances
_MIN_PIXELS = 8  # the same when the spacing is unknown (2-D)
_MIN_VOXELS = 8
_WITHIN_FRACTION = 0.5  # a component counts as inside its organ when this much of it is
_SUPPORT = 0.5  # mean probability the singular phrasing must give a plural component


def _present(result) -> bool:
    return result is not None and result.verdict in ("present", "unsure") and result.mask.any()


def _display(mask: np.ndarray, volume) -> np.ndarray:
    return mask if volume is None else volume.from_stored(mask)


def _stored(arr: np.ndarray, volume) -> np.ndarray:
    return arr if volume is None else volume.to_stored(arr)


def _axes_world(ndim: int, spacing, volume) -> np.ndarray:
    """3 x ndim: the world (RAS+, mm) vector of one step along each display axis."""
    sp = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if ndim == 2:  # an axial image in radiological display
        return np.array([[0.0, -sp[1]], [-sp[0], 0.0], [0.0, 0.0]])
    oriented = volume is not None and volume.meta.get("format") not in (None, "array")
    if oriented:
        lay = volume.layout
        cols = []
        for d in range(3):
            v = np.asarray(volume.affine[:3, lay.axes[d]], dtype=np.float64)
            if (d == 1 and lay.flip_rows) or (d == 2 and lay.flip_cols):
                v = -v
            cols.append(v)
        m = np.stack(cols, 1)
        if np.abs(m).sum() > 0:
            return m
    # the phantoms' convention: slice 0 inferior, row 0 anterior, column 0 the patient's right
    return np.array([[0.0, 0.0, -sp[2]], [0.0, -sp[1], 0.0], [sp[0], 0.0, 0.0]])


def _direction_score(order: str, centroids: np.ndarray, world: np.ndarray, ndim: int):
    """Per component, how far it lies towards ``order`` (larger: nearer that side)."""
    if order in ("top", "bottom"):
        s = -centroids[:, ndim - 2]
        return s if order == "top" else -s
    if order in ("image_left", "image_right"):
        s = -centroids[:, ndim - 1]
        return s if order == "image_left" else -s
    p = centroids @ world.T  # N x 3 world coordinates (RAS+)
    axis, sign = {
        "patient_right": (0, 1.0),
        "patient_left": (0, -1.0),
        "anterior": (1, 1.0),
        "posterior": (1, -1.0),
        "superior": (2, 1.0),
        "inferior": (2, -1.0),
    }[order]
    return sign * p[:, axis]


def _count_words(n: int, noun: str) -> str:
    if n == 0:
        return f"no {noun} was found"
    if n == 1:
        return f"only one {noun} was found"
    return f"only {n} {_plural(noun)} were found"


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    structure = STRUCTURE_3D if mask.ndim == 3 else np.ones((3, 3), dtype=bool)
    labels, n = ndimage.label(mask, structure=structure)
    return labels, int(n)


def _candidates(labels, n, spacing, within_mask) -> list[int]:
    """The labels ranked as instances (see the module docstring)."""
    idx = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.ones(n, dtype=bool)
    if spacing is not None:
        unit = float(np.prod([float(s) for s in spacing]))
        size = counts * unit
        if labels.ndim == 3:
            keep &= (6.0 * size / math.pi) ** (1 / 3) >= _MIN_DIAMETER_MM
        else:
            keep &= 2.0 * np.sqrt(size / math.pi) >= _MIN_DIAMETER_MM
    else:
        keep &= counts >= (_MIN_VOXELS if labels.ndim == 3 else _MIN_PIXELS)
    if labels.ndim == 3 and labels.shape[0] > 1:
        boxes = ndimage.find_objects(labels, n)
        keep &= np.array([b is not None and b[0].stop - b[0].start > 1 for b in boxes])
    if within_mask is not None and within_mask.any():
        organ = _filled(within_mask)
        inside = np.bincount(labels[organ].ravel(), minlength=n + 1)[1:]
        keep &= inside >= _WITHIN_FRACTION * counts
    chosen = idx[keep]
    return [int(c) for c in (chosen if chosen.size else idx)]


def _filled(mask: np.ndarray) -> np.ndarray:
    """The organ with its holes filled (a lesion the organ mask leaves out) and one pixel
    wider, slice by slice."""
    grow = np.ones((3, 3), dtype=bool)
    if mask.ndim == 2:
        return ndimage.binary_dilation(ndimage.binary_fill_holes(mask), grow)
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_dilation(ndimage.binary_fill_holes(mask[k]), grow)
    return out


def _choose(labels, cands, selector, spacing, world, ref_mask):
    """(label, None) of the selected component, or (None, why not)."""
    n = len(cands)
    rank = selector.rank
    need = abs(rank)
    if n < need:
        return None, _count_words(n, selector.noun)
    if selector.kind == "size":
        counts = np.bincount(labels.ravel(), minlength=labels.max() + 1)
        score = np.array([counts[c] for c in cands], dtype=np.float64)
        if selector.order == "smallest":
            score = -score
    elif selector.kind == "position":
        centroids = np.array(
            ndimage.center_of_mass(np.ones(labels.shape), labels, cands), dtype=np.float64
        ).reshape(n, labels.ndim)
        score = _direction_score(selector.order, centroids, world, labels.ndim)
    else:
        sampling = None if spacing is None else [float(s) for s in spacing]
        dist = ndimage.distance_transform_edt(~ref_mask, sampling=sampling)
        nearest = np.array(ndimage.minimum(dist, labels, cands), dtype=np.float64).reshape(n)
        mean = np.array(ndimage.mean(dist, labels, cands), dtype=np.float64).reshape(n)
        # by the minimal distance; the mean distance breaks ties (e.g. both touching)
        score = -(nearest + 1e-6 * mean)
        if selector.order == "farthest":
            score = -score
    order = np.argsort(-score, kind="stable")
    pick = order[rank - 1] if rank > 0 else order[rank]
    return cands[int(pick)], None


def _neighbourhood(chosen: np.ndarray, others: np.ndarray, spacing, radius_px: float):
    """Where the chosen component's probabilities are kept: within ``radius_px`` (in-plane
    pixels) of it and nearer to it than to any other component."""
    if chosen.ndim == 3 and spacing is not None:
        sampling = [
            float(spacing[0]) / float(spacing[1]),
            1.0,
            float(spacing[2]) / float(spacing[1]),
        ]
    elif spacing is not None:
        sampling = [1.0, float(spacing[1]) / float(spacing[0])]
    else:
        sampling = None
    d_chosen = ndimage.distance_transform_edt(~chosen, sampling=sampling)
    keep = d_chosen <= radius_px
    if others.any():
        d_other = ndimage.distance_transform_edt(~others, sampling=sampling)
        keep &= d_chosen <= d_other
    return keep


def _merged_unfamiliar(*results) -> list[str]:
    out: list[str] = []
    for r in results:
        for w in getattr(r, "unfamiliar", None) or []:
            if w not in out:
                out.append(w)
    return out


def resolve(
    result,
    selector: Selector,
    reference=None,
    *,
    within=None,
    support=None,
    spacing=None,
    volume=None,
):
    """Keep one connected component of a base answer, as ``selector`` says.

    Args:
        result: the base prompt's answer (``selector.base``): a ``SegmentationResult`` or a
            ``VolumeResult``.
        selector: from :func:`parse_selector`.
        reference: distance selectors: the answer for ``selector.reference`` (same image or
            volume, same type).
        within: the answer for ``selector.within`` (the organ the instances lie in), or None:
            no organ filter.
        support: the answer for ``selector.singular``, or None. Then a component of
            ``result`` counts only where ``support`` gives it a mean probability of at least
            0.5, and the components of ``support``'s own mask count too; a ``support``
            answer that is not "present" is not used. ``Segmenter`` asks
            it in volumes: each slice is decoded alone and most slices cut one lesion, where
            the plural prompt makes the model add a second, false one (on 3-D phantoms,
            "second from the top" Dice 0.34 -> 0.83 over 12 volumes), while the singular
            alone misses lesions on slices whose own presence score is low.
        spacing: 2-D: pixel spacing (row_mm, col_mm) for sizes and distances in mm (a volume
            uses its result's own spacing). Unknown: pixels.
        volume: the ``Volume`` a ``VolumeResult`` answers (its masks are in the file's stored
            order; this gives display order and the patient directions). None: stored order
            is display order (a numpy array), in the phantoms' convention.

    Returns:
        A result of the same type and the same score and verdict, with ``text`` the original
        prompt: holding only the chosen component (its probabilities kept near it, zero
        elsewhere; measurements recomputed); or, when it cannot be chosen (too few instances,
        the reference not found, a superior/inferior rank on a single image), the base answer
        with ``note`` saying why; or the base answer as it is when nothing was found.
    """
    if not isinstance(result, (SegmentationResult, VolumeResult)):
        raise TypeError(f"resolve takes a SegmentationResult or VolumeResult, got {result!r}")
    if selector.kind == "distance" and selector.reference and reference is None:
        raise ValueError(f"{selector.text!r} needs the answer for {selector.reference!r}")
    is_volume = isinstance(result, VolumeResult)
    vol = volume if is_volume else None
    unfamiliar = _merged_unfamiliar(result, reference)
    base = dataclasses.replace(result, text=selector.text, unfamiliar=unfamiliar)
    if not _present(result):
        return base
    if is_volume:
        spacing = result.spacing
    mask = _display(result.mask, vol)
    probs = _display(result.probs, vol)
    ndim = mask.ndim
    if selector.kind == "position" and selector.order in ("superior", "inferior") and ndim == 2:
        word = "superior" if selector.order == "superior" else "inferior"
        return dataclasses.replace(
            base,
            note=f"'most {word}' needs a volume: a single image has no head-to-foot axis",
        )
    order = selector.order
    if order in ("up", "down"):
        if ndim == 2:
            order = "top" if order == "up" else "bottom"
        else:
            order = "superior" if order == "up" else "inferior"
    sel = dataclasses.replace(selector, order=order)
    ref_mask = None
    if selector.kind == "distance":
        if not _present(reference):
            return dataclasses.replace(
                base,
                note=f"{selector.reference} was not found, so no {selector.noun} could be "
                f"chosen by its distance to it",
            )
        ref_mask = _display(reference.mask, vol)
    if support is not None and support.verdict == "present":
        # a singular phrasing the model is not sure of (e.g. the bare "the lesion") supports
        # nothing: filtering by it would drop real instances
        mask, probs = _supported(mask, probs, support, vol)
    within_mask = _display(within.mask, vol) if _present(within) else None
    labels, n = _components(mask)
    cands = _candidates(labels, n, spacing, within_mask)
    world = _axes_world(ndim, spacing, vol)
    label, why = _choose(labels, cands, sel, spacing, world, ref_mask)
    if label is None:
        return dataclasses.replace(base, note=why)
    chosen = labels == label
    others = (labels > 0) & ~chosen
    radius = max(3.0, 0.03 * max(mask.shape[-2:]))
    keep = _neighbourhood(chosen, others, spacing, radius)
    probs = np.where(keep, probs, 0.0).astype(np.float32)
    if is_volume:
        return _volume_result(base, chosen, probs, spacing, vol)
    area = int(chosen.sum())
    if spacing is not None:
        mm2 = area * float(spacing[0]) * float(spacing[1])
    elif result.area_mm2 is not None and result.area_px:
        mm2 = area * result.area_mm2 / result.area_px
    else:
        mm2 = None
    return dataclasses.replace(
        base, mask=chosen, probs=probs, area_px=area, area_mm2=mm2, n_components=1
    )


@dataclass(frozen=True)
class ReferringPlan:
    """What to decode for prompts on rows of encoded images when some name one instance
    (:func:`plan_referring`), and how to put the answers back together (:meth:`resolve`).

    Attributes:
        texts: the prompts to decode: each prompt's own text (its ``base`` when it has a
            selector), then each selector's reference and organ, once per image row.
        rows: the image row of each of ``texts``.
        selectors: one per original prompt (None: answered as it is).
        extra: (prompt, row) -> index in ``texts`` of a reference or organ answer.
    """

    texts: list[str]
    rows: list[int]
    selectors: list[Selector | None]
    extra: dict[tuple[str, int], int]

    def resolve(self, answers: Sequence, spacings: Sequence) -> list:
        """The original prompts' answers from the decoded ``answers`` (one per ``texts``);
        ``spacings``: one pixel spacing (or None) per original prompt."""
        out = []
        for j, (sel, sp) in enumerate(zip(self.selectors, spacings, strict=True)):
            if sel is None:
                out.append(answers[j])
                continue
            row = self.rows[j]
            ref = None if sel.reference is None else answers[self.extra[(sel.reference, row)]]
            organ = None if sel.within is None else answers[self.extra[(sel.within, row)]]
            out.append(resolve(answers[j], sel, ref, within=organ, spacing=sp))
        return out


def plan_referring(
    texts: Sequence[str], rows: Sequence[int], selectors: Sequence[Selector | None]
) -> ReferringPlan:
    """Plan one batched decoder call for ``texts`` on image ``rows`` (one row per text), with
    ``selectors`` from :func:`parse_selector` (None where a prompt names no instance): every
    prompt keeps its place (a selector's base prompt takes it), and the references and organs
    the selectors need are appended once per row, unless that row already asks them."""
    asked = [t if sel is None else sel.base for t, sel in zip(texts, selectors, strict=True)]
    asked_rows = [int(r) for r in rows]
    if len(asked_rows) != len(asked):
        raise ValueError(f"{len(asked)} prompts for {len(asked_rows)} rows")
    extra: dict[tuple[str, int], int] = {}
    own = {(t, r): i for i, (t, r) in enumerate(zip(asked, asked_rows, strict=True))}
    for sel, row in zip(selectors, rows, strict=True):
        row = int(row)
        for p in () if sel is None else (sel.reference, sel.within):
            if p is None or (p, row) in extra:
                continue
            if (p, row) in own:
                extra[(p, row)] = own[(p, row)]
            else:
                extra[(p, row)] = len(asked)
                asked.append(p)
                asked_rows.append(row)
    return ReferringPlan(asked, asked_rows, list(selectors), extra)


def _supported(mask, probs, support, vol):
    """(mask, probs) of the instances both phrasings support (see :func:`resolve`)."""
    s_probs = _display(support.probs, vol)
    s_mask = _display(support.mask, vol) if _present(support) else np.zeros_like(mask)
    labels, n = _components(mask)
    if n:
        means = np.asarray(ndimage.mean(s_probs, labels, np.arange(1, n + 1)), dtype=float)
        kept = np.isin(labels, 1 + np.flatnonzero(means >= _SUPPORT))
    else:
        kept = np.zeros_like(mask)
    merged = kept | s_mask
    if not merged.any():
        return mask, probs
    return merged, np.maximum(probs, s_probs)


def _volume_result(base: VolumeResult, chosen, probs, spacing, volume) -> VolumeResult:
    labels = chosen.astype(np.int32)
    vols, diam, where = measure_components(labels, 1, spacing)
    voxels = int(chosen.sum())
    volume_ml = None if spacing is None else voxels * float(np.prod(spacing)) / 1000.0
    return dataclasses.replace(
        base,
        mask=_stored(chosen, volume),
        probs=_stored(probs, volume),
        volume_ml=volume_ml,
        voxels=voxels,
        n_components=1,
        component_volumes_ml=vols,
        diameters_mm=diam,
        diameter_slices=where,
        slices=[int(k) for k in np.nonzero(chosen.any((1, 2)))[0]],
    )
