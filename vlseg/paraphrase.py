"""Many captions per image: paraphrases of what an image's manifest records say about it.

`vlseg align` pairs each image with one caption, so the embedding head learns one wording per
fact and zero-shot answers depend on how a user happens to phrase a label. With ``paraphrases: N``
it pairs each image with ``N`` captions from this generator instead: the same facts (modality,
lesion class or hepatic findings, which organs the slice shows) in varied templates, word order,
clinical and lay vocabulary and modality phrasings, some naming only the modality or only the
finding (the way labels are typed), plus the manifest's own caption.

The facts come from the records (`image_facts`): ``modality``, ``label``, the image caption, and
which targets are present or absent (hepatic lesion density and lobe, organs in or out of the
slice, the ink marking). Every caption is a pure function of ``(seed, key, facts)``.

The vocabulary here is written apart from ``bench/zeroshot_wording.py``: that benchmark's label
wordings must stay unseen (``tests/test_paraphrase.py`` checks that no caption contains one).

Example:
    >>> facts = ImageFacts("dermoscopy", "nevus", "dermoscopy image of a nevus on light skin")
    >>> caps = Paraphraser(seed=0).captions(facts, 8, key="derm_000001")
    >>> len(caps), len(set(caps))
    (8, 8)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

DERM_CLASSES = (
    "melanoma",
    "nevus",
    "seborrheic keratosis",
    "basal cell carcinoma",
    "dermatofibroma",
)
CT_LABELS = ("hepatic lesion", "normal liver")
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


@dataclass(frozen=True)
class ImageFacts:
    """What the records of one image state.

    Attributes:
        modality: ``"ct"``, ``"dermoscopy"`` or another string (then only the caption is used).
        label: the image class (``"hepatic lesion"`` / ``"normal liver"`` / a lesion class).
        caption: the manifest's image caption.
        present: target keys with a positive record (``"spleen"``, ``"lesions_hypodense"``, ...).
        absent: target keys with a negative record.
    """

    modality: str
    label: str
    caption: str
    present: frozenset[str] = field(default_factory=frozenset)
    absent: frozenset[str] = field(default_factory=frozenset)

    @property
    def signature(self) -> tuple:
        """Facts that captions can state: images with equal signatures share every caption."""
        organs = tuple(sorted(o for o in ORGANS if o in self.absent))
        return (self.modality, self.label, self.caption, organs)


def image_facts(records: Iterable) -> dict:
    """``{image path: ImageFacts}`` from manifest records (`vlseg.data.manifest.Record`)."""
    found: dict = {}
    for r in records:
        f = found.setdefault(
            r.image, {"m": r.modality, "l": r.label, "c": r.caption or "", "p": set(), "a": set()}
        )
        if r.caption and not f["c"]:
            f["c"] = r.caption
        if r.target:
            f["p" if r.positive else "a"].add(r.target)
    return {
        img: ImageFacts(f["m"], f["l"], f["c"], frozenset(f["p"]), frozenset(f["a"] - f["p"]))
        for img, f in found.items()
    }


# ----------------------------------------------------------------------------------------------
# Vocabulary

CT_MODALITY = [
    "abdominal CT slice",
    "abdominal CT",
    "CT image",
    "CT slice",
    "CT section",
    "computed tomography image",
    "computed tomography slice",
    "axial computed tomography",
    "transverse CT section",
    "CT section through the abdomen",
    "abdominal tomogram",
    "cross-sectional CT picture",
    "body CT",
    "CT examination of the abdomen",
    "CAT scan picture",
    "abdominal computed tomography",
    "tomographic image of the trunk",
    "scan through the belly",
    "radiological cross-section of the abdomen",
    "axial slice of a CT study",
    "CT study",
]
DERM_MODALITY = [
    "dermoscopy image",
    "dermoscopic image",
    "dermoscopic view",
    "dermatoscopic image",
    "dermoscopy photograph",
    "dermatoscopy",
    "polarized dermoscopy",
    "contact dermoscopy view",
    "magnified skin image",
    "skin surface seen under magnification",
    "dermoscope photo",
    "close-up skin photograph",
    "skin picture taken with a dermoscope",
    "macro picture of the skin",
    "dermatology close-up",
    "lesion seen through a dermatoscope",
]

DERM_NAMES = {
    "melanoma": [
        "melanoma",
        "malignant melanoma",
        "cutaneous melanoma",
        "pigmented melanoma",
        "superficial spreading melanoma",
        "melanocytic malignancy",
        "a melanoma",
    ],
    "nevus": [
        "nevus",
        "melanocytic nevus",
        "naevus",
        "benign mole",
        "common mole",
        "harmless mole",
        "benign pigmented nevus",
        "a nevus",
    ],
    "seborrheic keratosis": [
        "seborrheic keratosis",
        "seborrheic wart",
        "senile wart",
        "benign keratosis",
        "stuck-on keratosis",
        "keratosis seborrheica",
        "a seborrheic keratosis",
    ],
    "basal cell carcinoma": [
        "basal cell carcinoma",
        "basal cell cancer",
        "basalioma",
        "rodent ulcer",
        "BCC",
        "basal cell epithelioma",
        "a basal cell carcinoma",
    ],
    "dermatofibroma": [
        "dermatofibroma",
        "fibrous histiocytoma",
        "cutaneous fibrous histiocytoma",
        "cutaneous histiocytoma",
        "benign fibrous papule",
        "a dermatofibroma",
    ],
}
DERM_LAY = {  # lay descriptions, used alone and with the clinical name
    "melanoma": ["dangerous mole", "cancerous mole", "malignant pigmented spot"],
    "nevus": ["plain brown mole", "normal-looking mole", "ordinary beauty mark"],
    "seborrheic keratosis": ["waxy stuck-on growth", "crusty brown age growth", "wart-like patch"],
    "basal cell carcinoma": ["slow-growing skin cancer", "shiny pink skin cancer", "pink bump"],
    "dermatofibroma": ["hard little nodule in the skin", "firm brownish papule", "scar-like bump"],
}
DERM_FRAMES = [
    "{mod} of {name}",
    "{name} on {mod}",
    "{mod} showing {name}",
    "{name}",
    "{name}, {mod}",
    "{mod}: {name}",
    "{name} under dermoscopy",
    "{name} seen on {mod}",
    "{mod} demonstrating {name}",
    "lesion type: {name}",
    "{name} case",
    "{mod} of a patient with {name}",
    "skin {name}",
    "{name} {extra}",
    "{mod} of {name} {extra}",
]
TONE = {
    "light": ["on fair skin", "on pale skin", "on light skin"],
    "medium": ["on olive skin", "on medium-toned skin", "on tan skin"],
    "dark": ["on dark skin", "on brown skin", "on deeply pigmented skin"],
}
HAIR = ["with hairs", "with hairs crossing it", "partly covered by hair"]
INK = ["with a pen mark", "next to a surgical marker line", "with purple ink"]

LESION_NOUNS = [  # (singular, plural)
    ("hepatic lesion", "hepatic lesions"),
    ("liver lesion", "liver lesions"),
    ("liver tumour", "liver tumours"),
    ("hepatic tumor", "hepatic tumors"),
    ("hepatic mass", "hepatic masses"),
    ("liver mass", "liver masses"),
    ("hepatic nodule", "hepatic nodules"),
    ("focal liver lesion", "focal liver lesions"),
    ("liver neoplasm", "liver neoplasms"),
    ("focal hepatic abnormality", "focal hepatic abnormalities"),
    ("space-occupying liver lesion", "space-occupying liver lesions"),
    ("mass within the liver", "masses within the liver"),
]
LESION_LAY = [
    "a growth on the liver",
    "something abnormal inside the liver",
    "a tumour on the liver",
    "a dark patch in the liver",
]
DENSITY = {
    "hypo": ["hypodense", "low-attenuation", "hypoattenuating", "dark"],
    "hyper": ["hyperdense", "high-attenuation", "hyperattenuating", "bright"],
}
LOBE = {
    "right": ["in the right lobe", "in the right hepatic lobe", "of the right liver lobe"],
    "left": ["in the left lobe", "in the left hepatic lobe", "of the left liver lobe"],
}
COUNT = {1: ["one", "a single", "a"], 2: ["two", "a couple of"], 3: ["three", "several"]}
LESION_FRAMES = [
    "{find}",
    "{mod} with {find}",
    "{mod} showing {find}",
    "{find} on {mod}",
    "{find} seen on {mod}",
    "{mod}: {find}",
    "{mod} demonstrating {find}",
    "{find}, {mod}",
    "impression: {find}",
    "there is {find}",
]
NORMAL_LIVER = [
    "normal liver",
    "no hepatic lesion",
    "no focal liver lesion",
    "liver free of lesions",
    "unremarkable hepatic parenchyma",
    "no hepatic mass",
    "homogeneous liver",
    "liver without focal abnormality",
    "healthy-appearing liver",
    "no suspicious hepatic findings",
    "normal hepatic parenchyma",
    "no tumour in the liver",
    "liver lesion-free",
    "no evidence of a liver mass",
]
NORMAL_FRAMES = [
    "{find}",
    "{mod} with {find}",
    "{mod} showing {find}",
    "{mod}: {find}",
    "{find} on {mod}",
    "impression: {find}",
    "{find}, {mod}",
]

ORGAN_NAMES = {
    "liver": ["the liver", "liver"],
    "spleen": ["the spleen", "spleen"],
    "kidney_right": ["the right kidney", "right kidney"],
    "kidney_left": ["the left kidney", "left kidney"],
    "kidneys": ["both kidneys", "the kidneys"],
}
ORGAN_IN = [
    "{o} included",
    "{o} depicted",
    "{o} appears on this slice",
    "{o} in the field of view",
    "slice through {o}",
    "cut through {o}",
    "{o} is shown",
    "{o} can be seen",
]
ORGAN_OUT = [
    "{o} not included",
    "{o} not depicted",
    "{o} does not appear on this slice",
    "{o} outside the field of view",
    "{o} is not shown",
    "{o} missing from the slice",
    "{o} cannot be seen",
    "this level lacks {o}",
]

# Which caption forms to draw, by modality: (form, weight).
FORMS = {
    "ct": [("full", 0.35), ("finding", 0.2), ("modality", 0.1), ("organs", 0.2), ("mixed", 0.15)],
    "dermoscopy": [("full", 0.5), ("finding", 0.3), ("modality", 0.1), ("lay", 0.1)],
}


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _key_seed(seed: int, key: str) -> list[int]:
    return [int(seed), zlib.crc32(key.encode("utf-8"))]


class Paraphraser:
    """Deterministic caption paraphrases of `ImageFacts` (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    # -- public ------------------------------------------------------------------------------
    def captions(self, facts: ImageFacts, n: int, *, key: str = "") -> list[str]:
        """Up to ``n`` distinct captions of ``facts`` (fewer only when the facts allow fewer);
        the same ``(seed, key, facts)`` always gives the same list."""
        rng = np.random.default_rng(_key_seed(self.seed, key or facts.caption))
        out: list[str] = []
        seen: set[str] = set()
        for _ in range(50 * n):
            cap = self.compose(facts, rng)
            norm = cap.lower()
            if norm not in seen:
                seen.add(norm)
                out.append(cap)
            if len(out) == n:
                break
        return out

    def compose(self, facts: ImageFacts, rng: np.random.Generator) -> str:
        """One caption of ``facts``."""
        if facts.modality not in FORMS:
            return facts.caption
        forms, weights = zip(*FORMS[facts.modality], strict=True)
        form = forms[int(rng.choice(len(forms), p=np.array(weights) / sum(weights)))]
        if facts.modality == "dermoscopy":
            return self._derm(facts, rng, form)
        return self._ct(facts, rng, form)

    def contrast(self, facts: ImageFacts, rng: np.random.Generator) -> str | None:
        """A caption of the same modality that contradicts ``facts`` on one thing it names (a
        hard negative): another lesion class (dermoscopy), the other hepatic label, or an organ
        in / out of the slice (CT). None when there is nothing to contradict."""
        if facts.modality == "dermoscopy" and facts.label in DERM_CLASSES:
            other = _pick(rng, [c for c in DERM_CLASSES if c != facts.label])
            neg = replace(facts, label=other)
            return self._derm(neg, rng, _pick(rng, ["full", "full", "finding", "lay"]))
        if facts.modality != "ct":
            return None
        flip_label = facts.label in CT_LABELS and "liver" not in facts.absent
        organs = [o for o in ORGANS[1:] if o in facts.present or o in facts.absent]
        if flip_label and (not organs or rng.random() < 0.6):
            other = CT_LABELS[1 - CT_LABELS.index(facts.label)]
            lesion_keys = {k for k in facts.present if k.startswith("lesion")}
            neg = replace(
                facts, label=other, caption="", present=frozenset(facts.present - lesion_keys)
            )
            return self._ct(neg, rng, _pick(rng, ["full", "full", "finding"]))
        if not organs:
            return None
        organ = _pick(rng, organs)
        return self._organ_clause(facts, rng, organ=organ, flip=True, mod=True)

    # -- dermoscopy --------------------------------------------------------------------------
    def _derm_extra(self, facts: ImageFacts, rng) -> str:
        bits = []
        tone = re.search(r"\bon (light|medium|dark) skin\b", facts.caption)
        if tone and rng.random() < 0.6:
            bits.append(_pick(rng, TONE[tone.group(1)]))
        if "ink" in facts.present and rng.random() < 0.5:
            bits.append(_pick(rng, INK))
        elif "hair" in facts.caption and rng.random() < 0.4:
            bits.append(_pick(rng, HAIR))
        return " ".join(bits)

    def _derm(self, facts: ImageFacts, rng, form: str) -> str:
        mod = _pick(rng, DERM_MODALITY)
        if facts.label not in DERM_CLASSES:
            return mod if form == "modality" or not facts.caption else facts.caption
        name = _pick(rng, DERM_NAMES[facts.label])
        if form == "modality":
            return _pick(rng, [mod, f"{mod} of a skin lesion", f"{mod} of a pigmented spot"])
        if form == "lay":
            lay = _pick(rng, DERM_LAY[facts.label])
            return _pick(rng, [lay, f"{lay} ({name})", f"{name}, a {lay}", f"{mod} of a {lay}"])
        if form == "finding":
            return name
        extra = self._derm_extra(facts, rng)
        frame = _pick(rng, DERM_FRAMES)
        if "{extra}" in frame and not extra:
            frame = frame.replace(" {extra}", "")
        return frame.format(mod=mod, name=name, extra=extra).strip()

    # -- CT ----------------------------------------------------------------------------------
    def _lesion_phrase(self, facts: ImageFacts, rng) -> str:
        multiple = any(k.startswith("lesion_largest") for k in facts.present)
        m = re.search(r"\b(one|two|three|four)\b", facts.caption)
        count = {"one": 1, "two": 2, "three": 3, "four": 3}.get(m.group(1), 1) if m else None
        if count is None:
            count = 2 if multiple else 1
        if rng.random() < 0.12:
            return _pick(rng, LESION_LAY)
        sing, plur = _pick(rng, LESION_NOUNS)
        noun = plur if count > 1 else sing
        dens = [d for d in ("hypo", "hyper") if f"lesions_{d}dense" in facts.present]
        if not dens:  # captions name the density even when records do not
            dens = [d for d in ("hypo", "hyper") if f"{d}dense" in facts.caption]
        lobes = [lb for lb in ("right", "left") if f"lesions_{lb}_lobe" in facts.present]
        words = []
        r = rng.random()
        if r < 0.35 and count > 1:
            words.append(_pick(rng, ["multiple", "several"]) if count > 2 else _pick(rng, COUNT[2]))
        elif r < 0.35:
            words.append(_pick(rng, COUNT[1]))
        if dens and rng.random() < 0.5:
            words.append(" and ".join(_pick(rng, DENSITY[d]) for d in dens))
        words.append(noun)
        phrase = " ".join(words)
        if lobes and rng.random() < 0.4:
            if len(lobes) == 2:
                phrase += " in both lobes"
            else:
                phrase += " " + _pick(rng, LOBE[lobes[0]])
        if phrase.startswith("a ") and phrase[2:3] in "aeiou":
            phrase = "an " + phrase[2:]
        return phrase

    def _finding(self, facts: ImageFacts, rng) -> str | None:
        """The hepatic finding, or None when the slice has no liver (or no label)."""
        if "liver" in facts.absent and facts.label != "hepatic lesion":
            return None
        if facts.label == "hepatic lesion":
            return self._lesion_phrase(facts, rng)
        if facts.label == "normal liver":
            return _pick(rng, NORMAL_LIVER)
        return None

    def _organ_clause(
        self, facts: ImageFacts, rng, *, organ: str | None = None, flip: bool = False, mod=False
    ) -> str | None:
        """Whether an organ is on the slice (``organ``, else one drawn, absent ones more often);
        ``flip`` states the opposite; ``mod`` may prefix a modality phrase."""
        known = [o for o in ORGANS if o in facts.present or o in facts.absent]
        if organ is None:
            if not known:
                return None
            gone = [o for o in known if o in facts.absent]
            organ = _pick(rng, gone) if gone and rng.random() < 0.7 else _pick(rng, known)
        shown = organ not in facts.absent
        name = _pick(rng, ORGAN_NAMES[organ])
        pair = {"kidney_right", "kidney_left"}
        if organ in pair and not flip and rng.random() < 0.5:
            both = pair & facts.absent if not shown else pair - facts.absent
            if both == pair:  # both in, or both out, of the slice
                name = _pick(rng, ORGAN_NAMES["kidneys"])
        clause = _pick(rng, ORGAN_IN if shown != flip else ORGAN_OUT).format(o=name)
        if mod and rng.random() < 0.5:
            clause = _pick(rng, [f"{_pick(rng, CT_MODALITY)}, {clause}", f"{clause} on CT"])
        return clause

    def _ct(self, facts: ImageFacts, rng, form: str) -> str:
        mod = _pick(rng, CT_MODALITY)
        finding = self._finding(facts, rng)
        organ = self._organ_clause(facts, rng)
        if form == "modality":
            return _pick(rng, [mod, f"{mod} of the abdomen", f"{mod} of a patient"])
        if form == "organs" and organ:
            return _pick(rng, [organ, f"{mod}, {organ}", f"{organ} on {mod}", f"{mod}; {organ}"])
        if finding is None:  # no liver on the slice: say so, and what else is (not) there
            gone = _pick(rng, ORGAN_OUT).format(o=_pick(rng, ORGAN_NAMES["liver"]))
            return _pick(rng, [gone, f"{mod}, {gone}", f"{mod}; {organ or gone}"])
        frames = LESION_FRAMES if facts.label == "hepatic lesion" else NORMAL_FRAMES
        if form == "finding":
            return finding
        caption = _pick(rng, frames).format(mod=mod, find=finding)
        if form == "mixed" and organ:
            caption = _pick(
                rng, [f"{caption}; {organ}", f"{organ}; {caption}", f"{caption}, {organ}"]
            )
        return caption


def caption_pool(
    facts: ImageFacts, paraphraser: Paraphraser, n: int, *, key: str, original: bool = True
) -> list[str]:
    """``n`` paraphrases of ``facts``, after the manifest caption when ``original``."""
    caps = paraphraser.captions(facts, n, key=key)
    if original and facts.caption:
        caps = [facts.caption] + [c for c in caps if c.lower() != facts.caption.lower()]
    return caps
