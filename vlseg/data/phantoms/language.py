"""Referring-expression vocabulary for the phantoms.

Every phrase list comes in two parts: the ``train`` phrasings (used by the train/val/test splits)
and reserved ``heldout`` phrasings that only the ``test_heldout`` split uses, so that split measures
grounding of unseen wording rather than memorised strings.
"""

from __future__ import annotations

import numpy as np

# Instruction frames. "{}" is the noun phrase.
FRAMES = {
    "train": [
        "{}",
        "segment {}",
        "outline {}",
        "show {}",
        "highlight {}",
        "find {}",
        "mark {}",
        "show me {}",
        "locate {}",
        "segment {} please",
        "draw the contour of {}",
    ],
    "heldout": [
        "delineate {}",
        "where is {}?",
        "can you point out {}",
        "please contour {}",
        "I need a mask of {}",
    ],
}

# Held-out nouns that no offline text tower can ground: Latin anatomy ("hepar", "lien") and a
# coined name for the dermoscopy ink mark. A prompt with one of them cannot be answered from
# its words, so its records form their own split, ``test_unknown_words``, scored on whether the
# answer flags the word and stops short of a confident "present"; ``test_heldout`` keeps the
# paraphrases and unseen attribute combinations that a model can be expected to understand.
UNKNOWN_WORD_NOUNS = ("the hepar", "the lien", "the marker line")

# Noun phrases per target kind: (train phrasings, held-out phrasings).
NOUNS: dict[str, tuple[list[str], list[str]]] = {
    "liver": (["the liver", "the hepatic parenchyma", "the whole liver"], ["the hepar"]),
    "spleen": (["the spleen", "the splenic parenchyma"], ["the lien"]),
    "kidneys": (["both kidneys", "the kidneys", "the two kidneys"], ["the pair of kidneys"]),
    "kidney_right": (
        ["the right kidney", "the kidney on the patient's right"],
        ["the right-sided kidney"],
    ),
    "kidney_left": (
        ["the left kidney", "the kidney on the patient's left"],
        ["the left-sided kidney"],
    ),
    "spine": (
        ["the spine", "the vertebra", "the vertebral body", "the lumbar vertebra"],
        ["the backbone"],
    ),
    "aorta": (["the aorta", "the abdominal aorta"], ["the main artery"]),
    "renal_cyst": (
        ["the renal cyst", "the kidney cyst", "the cyst in the kidney"],
        ["the cystic renal lesion"],
    ),
    "skin_lesion": (
        ["the lesion", "the skin lesion", "the spot", "the mole", "the lesion on the skin"],
        ["the skin growth", "the blemish"],
    ),
    "ink": (["the ink mark", "the pen marking", "the purple marking"], ["the marker line"]),
    "melanoma": (["the melanoma", "the malignant melanoma"], ["the melanocytic cancer"]),
    "nevus": (["the nevus", "the benign mole", "the naevus"], ["the melanocytic nevus"]),
    "seborrheic keratosis": (
        ["the seborrheic keratosis", "the keratosis"],
        ["the seborrheic wart"],
    ),
    "basal cell carcinoma": (["the basal cell carcinoma", "the bcc"], ["the basalioma"]),
    "dermatofibroma": (
        ["the dermatofibroma", "the fibrous skin nodule"],
        ["the benign fibrous histiocytoma"],
    ),
}

# Hepatic-lesion nouns as (singular, plural).
LESION_NOUNS = {
    "train": [
        ("lesion", "lesions"),
        ("hepatic lesion", "hepatic lesions"),
        ("liver lesion", "liver lesions"),
        ("liver tumour", "liver tumours"),
        ("hepatic mass", "hepatic masses"),
        ("spot on the liver", "spots on the liver"),
    ],
    "heldout": [
        ("liver tumor", "liver tumors"),
        ("hepatic nodule", "hepatic nodules"),
        ("focal liver lesion", "focal liver lesions"),
    ],
}
DENSITY_ADJ = {
    "hypo": {"train": ["dark", "hypodense", "low-density"], "heldout": ["hypoattenuating"]},
    "hyper": {"train": ["bright", "hyperdense", "high-density"], "heldout": ["hyperattenuating"]},
}
LOBE_PHRASES = {
    "train": ["in the {} lobe", "of the {} lobe", "in the {} hepatic lobe"],
    "heldout": ["within the {} lobe of the liver"],
}
SIZE_SUPERLATIVE = {
    "largest": {"train": ["largest", "biggest"], "heldout": ["most extensive"]},
    "smallest": {"train": ["smallest", "tiniest"], "heldout": ["least extensive"]},
}
SKIN_ADJ = {
    "dark": {"train": ["dark", "darkly pigmented"], "heldout": ["deeply pigmented"]},
    "light": {"train": ["light brown", "faint"], "heldout": ["lightly pigmented"]},
    "pink": {"train": ["pink", "reddish"], "heldout": ["rosy"]},
    "irregular": {"train": ["irregular", "asymmetric"], "heldout": ["ragged"]},
    "regular": {"train": ["round", "symmetric"], "heldout": ["well-circumscribed"]},
}


def _pool(table: dict[str, list[str]] | tuple[list[str], list[str]], heldout: bool) -> list[str]:
    if isinstance(table, tuple):
        return table[1] if heldout else table[0]
    return table["heldout" if heldout else "train"]


def frame(rng: np.random.Generator, nouns: list[str], heldout: bool, k: int) -> list[str]:
    """Up to ``k`` distinct instructions built from noun phrases.

    In held-out mode each phrase uses a held-out frame, so even a training noun appears in
    unseen wording; noun lists passed in are expected to come from the same mode.
    """
    frames = FRAMES["heldout"] if heldout else FRAMES["train"]
    combos = [f.format(n) for n in nouns for f in frames]
    order = rng.permutation(len(combos))
    out: list[str] = []
    for i in order:
        if combos[i] not in out:
            out.append(combos[i])
        if len(out) == k:
            break
    return out


def uses_unknown_word(prompt: str) -> bool:
    """Whether a prompt names its target with one of :data:`UNKNOWN_WORD_NOUNS`."""
    text = prompt.lower()
    return any(noun in text for noun in UNKNOWN_WORD_NOUNS)


def nouns(kind: str, heldout: bool) -> list[str]:
    """Noun phrases for a target kind (see ``NOUNS``)."""
    return list(_pool(NOUNS[kind], heldout))


def lesion_phrases(
    *,
    count: int,
    heldout: bool,
    density: str | None = None,
    lobe: str | None = None,
    superlative: str | None = None,
) -> list[str]:
    """Noun phrases for a group of hepatic lesions described by its attributes.

    Args:
        count: number of lesions in the group (chooses singular or plural).
        heldout: use reserved phrasings.
        density: ``"hypo"`` or ``"hyper"`` to add a density adjective.
        lobe: ``"right"`` or ``"left"`` to add a location.
        superlative: ``"largest"`` or ``"smallest"`` (singular only).
    """
    mode = "heldout" if heldout else "train"
    out = []
    for sing, plur in LESION_NOUNS[mode]:
        noun = sing if count == 1 or superlative else plur
        adjs = DENSITY_ADJ[density][mode] if density else [""]
        sups = SIZE_SUPERLATIVE[superlative][mode] if superlative else [""]
        locs = [p.format(lobe) for p in LOBE_PHRASES[mode]] if lobe else [""]
        for adj in adjs:
            for sup in sups:
                for loc in locs:
                    words = [w for w in (sup, adj, noun) if w]
                    head = "the " + " ".join(words)
                    if count > 1 and not superlative and not density and not lobe:
                        out.append(f"all {' '.join(words)}")
                    out.append(f"{head} {loc}".strip())
    return out


def skin_phrases(adjectives: list[str], heldout: bool) -> list[str]:
    """Noun phrases for the skin lesion qualified by visual adjectives (keys of SKIN_ADJ)."""
    mode = "heldout" if heldout else "train"
    heads = ["lesion", "spot", "mole"] if not heldout else ["growth", "lesion"]
    return [
        f"the {adj} {head}" for key in adjectives for adj in SKIN_ADJ[key][mode] for head in heads
    ]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def count_word(n: int) -> str:
    return {0: "no", 1: "one", 2: "two", 3: "three", 4: "four"}.get(n, str(n))
