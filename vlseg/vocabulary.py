"""The words a model was trained to ground, and the words of a prompt it never saw.

A referring-segmentation decoder grounds the words of its training prompts; a word it never saw
in training (a Latin synonym, a brand name, a typo) may be understood through the text tower's
pre-training or not at all, and the answer gives no sign of which. Checkpoints and adapters
therefore record the vocabulary of their training prompts (``vocabulary`` in ``config.yaml`` /
``adapter.yaml``), and every answer names the prompt's words outside it
(``SegmentationResult.unfamiliar``), so the chat app and the CLI can say so.

Add the vocabulary of a dataset to a checkpoint (e.g. one trained before this was recorded;
words already recorded are kept)::

    vlseg vocabulary --data data/phantoms --split train --into CHECKPOINT_DIR
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Function words, the words of a request ("I'd like a mask of ...", "delineate ..."), of a size
# question ("how big is ...") and chat courtesies name no target of their own: never reported
# as unfamiliar.
STOPWORDS = frozenset(
    """a an the of in on at to for from with within by and or but not no is are was were be
    there here this that these those it its me my mine i you your we our us he she they them
    his her their what which where who whom whose how can could would will shall should may
    might must do does did please kindly some any all each every both either one two just also
    only now again up out as about too well than then next same other another instead try
    need want like give get see let tell point mask masks segmentation region area image
    picture photo scan slice ct thank thanks hi hello ok okay yes sure i'd i'm i'll i've
    can't don't won't doesn't isn't
    segment delineate outline contour highlight show find locate mark draw identify display
    depict indicate trace select extract detect label annotate circle visualize visualise
    present absent visible
    how big large many much size sizes volume extent diameter diameters dimensions measure
    measurement measurements""".split()
)
_TOKEN = re.compile(r"[^\s\-\u2010-\u2015,;:.!?()\[\]{}\"“”/\\+*=<>|&#@%~^`]+")


def words(text: str) -> list[str]:
    """Lower-cased words of a text: split at spaces, hyphens and punctuation; curly apostrophes
    read as straight ones; a possessive "'s" dropped ("the patient's" -> "patient"); tokens
    with a digit ("L3", "2nd") and single letters left out (they are labels, not words)."""
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'").replace("\u2018", "'")
    out = []
    for tok in _TOKEN.findall(text):
        tok = tok.strip("'")
        if tok.endswith("'s"):
            tok = tok[:-2]
        if len(tok) > 1 and not any(ch.isdigit() for ch in tok):
            out.append(tok)
    return out


def vocabulary_of(prompts: Iterable[str], known: str | list[str] | None = None) -> str:
    """The distinct words of training prompts (and of a ``known`` recorded vocabulary they
    extend), sorted and space-separated (one YAML scalar loads fast even for a large
    vocabulary), function words left out."""
    seen = {w for p in prompts for w in words(p)} | (parse(known) or frozenset())
    return " ".join(sorted(seen - STOPWORDS))


def parse(recorded: str | list[str] | None) -> frozenset[str] | None:
    """A recorded vocabulary (space-separated words, or a list) as a set; None stays None."""
    if recorded is None:
        return None
    return frozenset(recorded.split() if isinstance(recorded, str) else recorded)


def unfamiliar(text: str, vocabulary: frozenset[str] | None) -> list[str]:
    """Words of ``text`` outside ``vocabulary``, in order of appearance (none when the model
    records no vocabulary)."""
    if vocabulary is None:
        return []
    out: list[str] = []
    for w in words(text):
        if w not in vocabulary and w not in STOPWORDS and w not in out:
            out.append(w)
    return out


def ungrounded(text: str, vocabulary: frozenset[str] | None) -> bool:
    """True when ``text`` names something but none of its content words is in ``vocabulary``
    ("segment the hepar", "where is the main artery?"): the model then has nothing it was
    trained on to ground the prompt. A prompt with at least one known content word ("the
    right-sided kidney") is grounded; so is every prompt when no vocabulary is recorded."""
    if vocabulary is None:
        return False
    content = [w for w in words(text) if w not in STOPWORDS]
    return bool(content) and not any(w in vocabulary for w in content)
