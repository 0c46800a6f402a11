"""Requests around a description: "can you show me the liver?" asks for "the liver".

People type segmentation prompts as requests ("I need a mask of the backbone", "where is the
hepatic nodule?", "please contour the spleen"), and a model trained on descriptions and a few
command forms can fail on a request phrasing it never saw even when it knows the thing
described: on the held-out phrasings of the phantoms, "I need a mask of the backbone" scored
Dice 0 where "the backbone" scored 0.97. :func:`strip_request` removes the request around the
description; the chat reads messages with the same grammar (``vlseg.chat.intents``), and
``Segmenter.segment`` and ``vlseg eval`` give the model what it returns, except for the request
forms the model was trained with (:func:`request_forms_of`, recorded in a checkpoint as
``requests`` beside its ``vocabulary``): "segment the liver" reaches a model trained on
"segment ..." prompts as typed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = [
    "LEAD",
    "SHOW_WHERE",
    "TAIL",
    "VERB",
    "model_text",
    "plain_text",
    "request_forms_of",
    "split_request",
    "strip_request",
]

LEAD = re.compile(
    r"^(?:(?:please|kindly|ok(?:ay)?|now|so|then|hey|also|and|can you|could you|would you|"
    r"will you|can u|could u|i want you to|i'd like you to|i would like you to|help me|"
    r"i meant|i mean|i said|actually|rather|no|sorry|oops|wait|just|instead)\b[\s,]*)+",
    re.IGNORECASE,
)
VERB = re.compile(
    r"^(?:(?:draw|put|make|create|give me)\s+(?:a|an|the)\s+(?:mask|outline|contour|box|"
    r"circle|border|line)\s+(?:around|of|for|on)|segment|show(?:\s+me)?|find(?:\s+me)?|"
    r"highlight|outline|contour|mark|locate|delineate|mask|draw(?:\s+around)?|detect|display|"
    r"point out|where(?:\s+(?:exactly|precisely|abouts))?(?:'s|\s+is|\s+are|\s+can i see)|"
    r"is there|are there|identify|label|get(?:\s+me)?|annotate|circle|extract|pick out|"
    r"i'?d (?:like|love) to see|i would (?:like|love) to see|i want to see|i need to see|"
    r"i need|i want|i'?m looking for|i am looking for|look for|give me|let me see|can i see|"
    r"(?:a|the)\s+(?:mask|outline|contour|boundary|segmentation|border)\s+(?:of|for)|"
    r"segmentation of|"
    # size and count questions ask about the thing described: "how big is the liver?"
    r"how\s+(?:big|large|small|long|wide|thick|extensive)\s+(?:is|are)|how\s+many|"
    r"what(?:'s|\s+is|\s+are)\s+the\s+(?:size|area|volume|extent|diameters?|dimensions?|"
    r"measurements?)\s+of)\b\s*(?:any\s+|me\s+)?",
    re.IGNORECASE,
)
TAIL = re.compile(
    r"(?:\s*\b(?:please|thanks|thank you|for me|too|as well|instead|again|located|"
    r"(?:segmented|outlined|highlighted|marked|shown)|(?:in|on) (?:this|the) "
    r"(?:image|scan|slice|picture|photo)|if (?:any|present|there is one)|(?:is|are)\s+there|is|"
    r"are)\b|"
    r"[\s.!?;:,])+$",
    re.IGNORECASE,
)
SHOW_WHERE = re.compile(
    r"^(?:show|tell)(?:\s+me)?\s+where\s+(?P<x>.+?)\s+(?:is|are)(?:\s+located)?$", re.I
)


def strip_request(text: str, *, keep: bool = True) -> str:
    """The description inside a request: leading politeness and request verbs ("please can
    you segment", "I need a mask of", "where is") and trailing fillers ("please", "in this
    image", "?") removed, repeatedly. A text that is nothing but a request ("segment") is
    returned as is (``keep=False``: as an empty string).

    >>> strip_request("Could you please outline the left kidney for me?")
    'the left kidney'
    >>> strip_request("the hepatic lesion")
    'the hepatic lesion'
    """
    prev, out = None, text.strip()
    while prev != out:  # "please can you segment ..." needs several passes
        prev = out
        out = LEAD.sub("", out).strip()
        where = SHOW_WHERE.match(out.rstrip(" ?.!"))
        if where:
            out = where.group("x").strip()
        out = VERB.sub("", out).strip()
        out = TAIL.sub("", out).strip()
        out = re.sub(r"^(?:and|then|also)\s+", "", out, flags=re.IGNORECASE).strip()
    return out or (text.strip() if keep else "")


def _norm(part: str) -> str:
    return " ".join(part.lower().strip(" ,.!?;:").split())


def split_request(text: str) -> tuple[str, str, str]:
    """``(lead, description, tail)`` of a prompt, lead and tail lower-cased with single
    spaces ("Could you outline the liver, please?" -> ("could you outline", "the liver",
    "please")); a plain description has an empty lead and tail."""
    text = text.strip()
    desc = strip_request(text)
    at = text.lower().find(desc.lower())
    if at < 0:  # "show me where X is": the description sat inside the request
        return _norm(text), desc, ""
    return _norm(text[:at]), desc, _norm(text[at + len(desc) :])


def request_forms_of(prompts: Iterable[str], known: dict | None = None) -> dict[str, list[str]]:
    """The request forms of training prompts (and of ``known`` recorded forms they extend):
    ``{"leads": [...], "tails": [...]}``, sorted, "" for a prompt without one."""
    leads = set((known or {}).get("leads", ()))
    tails = set((known or {}).get("tails", ()))
    for p in prompts:
        lead, _, tail = split_request(p)
        leads.add(lead)
        tails.add(tail)
    return {"leads": sorted(leads), "tails": sorted(tails)}


def plain_text(text: str) -> str:
    """``text`` without emoji and other symbols or control characters (they carry nothing a
    segmentation model can use, yet "🫁 the liver 🫁" halved the liver's mask), spaces
    collapsed; letters, digits and punctuation are kept.

    >>> plain_text("🫁 the liver ✅")
    'the liver'
    """
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("So", "Sk", "Cs", "Co", "Cn") or ch in "\u200d\ufe0e\ufe0f":
            continue
        kept.append(" " if cat == "Cc" else ch)
    return " ".join("".join(kept).split())


def model_text(text: str, forms: dict | None) -> str:
    """What the model is given for ``text``: the text as typed (without symbols and emoji,
    :func:`plain_text`) when its request form (lead and tail) is one the model was trained
    with (``forms``), else the description inside it. ``forms`` None (a model that records
    none): always the description."""
    text = plain_text(text) or text
    lead, desc, tail = split_request(text)
    if forms is not None and lead in forms.get("leads", ()) and tail in forms.get("tails", ()):
        return text.strip()
    return desc
