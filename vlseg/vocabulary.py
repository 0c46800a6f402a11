"""The words a model was trained to ground, and the words of a prompt it never saw.

A referring-segmentation decoder grounds the words of its training prompts; a word it never saw
in training (a Latin synonym, a brand name, a typo) may be understood through the text tower's
pre-training or not at all, and the answer gives no sign of which. Checkpoints and adapters
therefore record the vocabulary of their training prompts (``vocabulary`` in ``config.yaml`` /
``adapter.yaml``), and every answer names the prompt's words outside it
(``SegmentationResult.unfamiliar``), so the chat app and the CLI can say so.

Add the vocabulary of a dataset to an existing checkpoint (e.g. one trained before this was
recorded)::

    vlseg vocabulary --data data/phantoms --split train --into CHECKPOINT_DIR
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Function words and the words of a request ("I need a mask of ...") name no target of their
# own: never reported as unfamiliar.
STOPWORDS = frozenset(
    """a an the of in on at to for from with within by and or but not no is are was were be
    there here this that these those it its me my mine i you your we our us he she they them
    his her their what which where who whom whose how can could would will shall should may
    might must do does did please kindly some any all each every both either one two just also
    only now again up out need want like give get see let tell point mask masks segmentation
    region area image picture photo scan slice ct""".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def words(text: str) -> list[str]:
    """Lower-cased words of a text (letters only; "patient's" stays one word)."""
    return _WORD.findall(text.lower())


def vocabulary_of(prompts: Iterable[str]) -> list[str]:
    """Sorted distinct words of training prompts, function words left out."""
    return sorted({w for p in prompts for w in words(p)} - STOPWORDS)


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
