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


# ----------------------------------------------------------------------------------------------
# Claims: what a caption states, so that a caption drawn for one image can be recognised as true
# of another (multi-positive contrastive training; ``vlseg align``).
#
# A claim is a small tuple: ("modality", m), ("label", l), ("caption", c) (a manifest caption
# states everything it says, so only images with that caption share it), ("tone", t), ("ink",),
# ("hair",), ("organ", o, shown), ("lesions_many", bool), ("lesion_count", 1 | 2 | 3),
# ("density", "hypo" | "hyper"), ("lobe", "right" | "left" | "both"). A caption is true of an
# image when its claims are a subset of `fact_claims` of that image.


def _lesion_count(facts: ImageFacts) -> int:
    """Lesion count as captions state it (3 stands for three or more)."""
    m = re.search(r"\b(one|two|three|four)\b", facts.caption)
    if m:
        return {"one": 1, "two": 2, "three": 3, "four": 3}[m.group(1)]
    return 2 if any(k.startswith("lesion_largest") for k in facts.present) else 1


def _densities(facts: ImageFacts) -> list[str]:
    dens = [d for d in ("hypo", "hyper") if f"lesions_{d}dense" in facts.present]
    if not dens:  # captions name the density even when records do not
        dens = [d for d in ("hypo", "hyper") if f"{d}dense" in facts.caption]
    return dens


def _lobes(facts: ImageFacts) -> list[str]:
    return [lb for lb in ("right", "left") if f"lesions_{lb}_lobe" in facts.present]


def fact_claims(facts: ImageFacts) -> frozenset:
    """Every claim (see above) that is true of an image with these facts."""
    out: set = {("modality", facts.modality)}
    if facts.caption:
        out.add(("caption", facts.caption))
    if facts.modality == "dermoscopy":
        if facts.label in DERM_CLASSES:
            out.add(("label", facts.label))
        tone = re.search(r"\bon (light|medium|dark) skin\b", facts.caption)
        if tone:
            out.add(("tone", tone.group(1)))
        if "ink" in facts.present:
            out.add(("ink",))
        if "hair" in facts.caption:
            out.add(("hair",))
    elif facts.modality == "ct":
        if facts.label == "hepatic lesion":
            count = _lesion_count(facts)
            out |= {("label", "hepatic lesion"), ("lesions_many", count > 1)}
            out.add(("lesion_count", min(count, 3)))
            out |= {("density", d) for d in _densities(facts)}
            lobes = _lobes(facts)
            if lobes:
                out.add(("lobe", "both" if len(lobes) == 2 else lobes[0]))
        elif facts.label == "normal liver" and "liver" not in facts.absent:
            out.add(("label", "normal liver"))
        for o in ORGANS:
            if o in facts.present or o in facts.absent:
                out.add(("organ", o, o not in facts.absent))
    return frozenset(out)


class Paraphraser:
    """Deterministic caption paraphrases of `ImageFacts` (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    # -- public ------------------------------------------------------------------------------
    def captions(self, facts: ImageFacts, n: int, *, key: str = "") -> list[str]:
        """Up to ``n`` distinct captions of ``facts`` (fewer only when the facts allow fewer);
        the same ``(seed, key, facts)`` always gives the same list."""
        return [c for c, _ in self.captions_with_claims(facts, n, key=key)]

    def captions_with_claims(
        self, facts: ImageFacts, n: int, *, key: str = ""
    ) -> list[tuple[str, frozenset]]:
        """`captions`, each with the claims it states (a subset of ``fact_claims(facts)``)."""
        rng = np.random.default_rng(_key_seed(self.seed, key or facts.caption))
        out: list[tuple[str, frozenset]] = []
        seen: set[str] = set()
        for _ in range(50 * n):
            cap, claims = self.compose_with_claims(facts, rng)
            norm = cap.lower()
            if norm not in seen:
                seen.add(norm)
                out.append((cap, claims))
            if len(out) == n:
                break
        return out

    def compose(self, facts: ImageFacts, rng: np.random.Generator) -> str:
        """One caption of ``facts``."""
        return self.compose_with_claims(facts, rng)[0]

    def compose_with_claims(
        self, facts: ImageFacts, rng: np.random.Generator
    ) -> tuple[str, frozenset]:
        """One caption of ``facts`` and the claims it states."""
        if facts.modality not in FORMS:
            return facts.caption, frozenset({("caption", facts.caption)})
        forms, weights = zip(*FORMS[facts.modality], strict=True)
        form = forms[int(rng.choice(len(forms), p=np.array(weights) / sum(weights)))]
        if facts.modality == "dermoscopy":
            cap, claims = self._derm(facts, rng, form)
        else:
            cap, claims = self._ct(facts, rng, form)
        return cap, frozenset(claims)

    def contrast(self, facts: ImageFacts, rng: np.random.Generator) -> str | None:
        """A caption of the same modality that contradicts ``facts`` on one thing it names (a
        hard negative): another lesion class (dermoscopy), the other hepatic label, or an organ
        in / out of the slice (CT). None when there is nothing to contradict."""
        if facts.modality == "dermoscopy" and facts.label in DERM_CLASSES:
            other = _pick(rng, [c for c in DERM_CLASSES if c != facts.label])
            neg = replace(facts, label=other)
            return self._derm(neg, rng, _pick(rng, ["full", "full", "finding", "lay"]))[0]
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
            return self._ct(neg, rng, _pick(rng, ["full", "full", "finding"]))[0]
        if not organs:
            return None
        organ = _pick(rng, organs)
        return self._organ_clause(facts, rng, organ=organ, flip=True, mod=True)[0]

    # -- dermoscopy --------------------------------------------------------------------------
    def _derm_extra(self, facts: ImageFacts, rng) -> tuple[str, set]:
        bits, claims = [], set()
        tone = re.search(r"\bon (light|medium|dark) skin\b", facts.caption)
        if tone and rng.random() < 0.6:
            bits.append(_pick(rng, TONE[tone.group(1)]))
            claims.add(("tone", tone.group(1)))
        if "ink" in facts.present and rng.random() < 0.5:
            bits.append(_pick(rng, INK))
            claims.add(("ink",))
        elif "hair" in facts.caption and rng.random() < 0.4:
            bits.append(_pick(rng, HAIR))
            claims.add(("hair",))
        return " ".join(bits), claims

    def _derm(self, facts: ImageFacts, rng, form: str) -> tuple[str, set]:
        mod = _pick(rng, DERM_MODALITY)
        said = {("modality", "dermoscopy")}
        if facts.label not in DERM_CLASSES:
            if form == "modality" or not facts.caption:
                return mod, said
            return facts.caption, {("caption", facts.caption)}
        name = _pick(rng, DERM_NAMES[facts.label])
        if form == "modality":
            return _pick(rng, [mod, f"{mod} of a skin lesion", f"{mod} of a pigmented spot"]), said
        said.add(("label", facts.label))
        if form == "lay":
            lay = _pick(rng, DERM_LAY[facts.label])
            cap = _pick(rng, [lay, f"{lay} ({name})", f"{name}, a {lay}", f"{mod} of a {lay}"])
            return cap, said
        if form == "finding":
            return name, said
        extra, extra_claims = self._derm_extra(facts, rng)
        frame = _pick(rng, DERM_FRAMES)
        if "{extra}" in frame:
            if extra:
                said |= extra_claims
            else:
                frame = frame.replace(" {extra}", "")
        return frame.format(mod=mod, name=name, extra=extra).strip(), said

    # -- CT ----------------------------------------------------------------------------------
    def _lesion_phrase(self, facts: ImageFacts, rng) -> tuple[str, set]:
        count = _lesion_count(facts)
        said = {("label", "hepatic lesion")}
        if rng.random() < 0.12:
            return _pick(rng, LESION_LAY), said
        sing, plur = _pick(rng, LESION_NOUNS)
        noun = plur if count > 1 else sing
        said.add(("lesions_many", count > 1))
        dens = _densities(facts)
        lobes = _lobes(facts)
        words = []
        r = rng.random()
        if r < 0.35 and count > 1:
            words.append(_pick(rng, ["multiple", "several"]) if count > 2 else _pick(rng, COUNT[2]))
            said.add(("lesion_count", min(count, 3)))
        elif r < 0.35:
            words.append(_pick(rng, COUNT[1]))
            said.add(("lesion_count", 1))
        if dens and rng.random() < 0.5:
            words.append(" and ".join(_pick(rng, DENSITY[d]) for d in dens))
            said |= {("density", d) for d in dens}
        words.append(noun)
        phrase = " ".join(words)
        if lobes and rng.random() < 0.4:
            if len(lobes) == 2:
                phrase += " in both lobes"
            else:
                phrase += " " + _pick(rng, LOBE[lobes[0]])
            said.add(("lobe", "both" if len(lobes) == 2 else lobes[0]))
        if phrase.startswith("a ") and phrase[2:3] in "aeiou":
            phrase = "an " + phrase[2:]
        return phrase, said

    def _finding(self, facts: ImageFacts, rng) -> tuple[str | None, set]:
        """The hepatic finding (and its claims), or None when the slice has no liver (or no
        label)."""
        if "liver" in facts.absent and facts.label != "hepatic lesion":
            return None, set()
        if facts.label == "hepatic lesion":
            return self._lesion_phrase(facts, rng)
        if facts.label == "normal liver":
            return _pick(rng, NORMAL_LIVER), {("label", "normal liver")}
        return None, set()

    def _organ_clause(
        self, facts: ImageFacts, rng, *, organ: str | None = None, flip: bool = False, mod=False
    ) -> tuple[str | None, set]:
        """Whether an organ is on the slice (``organ``, else one drawn, absent ones more often);
        ``flip`` states the opposite; ``mod`` may prefix a modality phrase. With its claims."""
        known = [o for o in ORGANS if o in facts.present or o in facts.absent]
        if organ is None:
            if not known:
                return None, set()
            gone = [o for o in known if o in facts.absent]
            organ = _pick(rng, gone) if gone and rng.random() < 0.7 else _pick(rng, known)
        shown = organ not in facts.absent
        name = _pick(rng, ORGAN_NAMES[organ])
        named = {organ}
        pair = {"kidney_right", "kidney_left"}
        if organ in pair and not flip and rng.random() < 0.5:
            both = pair & facts.absent if not shown else pair - facts.absent
            if both == pair:  # both in, or both out, of the slice
                name = _pick(rng, ORGAN_NAMES["kidneys"])
                named = pair
        said = {("organ", o, shown != flip) for o in named}
        clause = _pick(rng, ORGAN_IN if shown != flip else ORGAN_OUT).format(o=name)
        if mod and rng.random() < 0.5:
            clause = _pick(rng, [f"{_pick(rng, CT_MODALITY)}, {clause}", f"{clause} on CT"])
        return clause, said

    def _ct(self, facts: ImageFacts, rng, form: str) -> tuple[str, set]:
        mod = _pick(rng, CT_MODALITY)
        said = {("modality", "ct")}
        finding, finding_claims = self._finding(facts, rng)
        organ, organ_claims = self._organ_clause(facts, rng)
        if form == "modality":
            return _pick(rng, [mod, f"{mod} of the abdomen", f"{mod} of a patient"]), said
        if form == "organs" and organ:
            cap = _pick(rng, [organ, f"{mod}, {organ}", f"{organ} on {mod}", f"{mod}; {organ}"])
            return cap, said | organ_claims
        if finding is None:  # no liver on the slice: say so, and what else is (not) there
            gone = _pick(rng, ORGAN_OUT).format(o=_pick(rng, ORGAN_NAMES["liver"]))
            j = int(rng.integers(3))  # as _pick over the three forms below
            cap = [gone, f"{mod}, {gone}", f"{mod}; {organ or gone}"][j]
            if j == 2 and organ:
                return cap, said | organ_claims
            return cap, said | {("organ", "liver", False)}
        said |= finding_claims
        frames = LESION_FRAMES if facts.label == "hepatic lesion" else NORMAL_FRAMES
        if form == "finding":
            return finding, said
        caption = _pick(rng, frames).format(mod=mod, find=finding)
        if form == "mixed" and organ:
            caption = _pick(
                rng, [f"{caption}; {organ}", f"{organ}; {caption}", f"{caption}, {organ}"]
            )
            said |= organ_claims
        return caption, said


def caption_pool(
    facts: ImageFacts, paraphraser: Paraphraser, n: int, *, key: str, original: bool = True
) -> list[str]:
    """``n`` paraphrases of ``facts``, after the manifest caption when ``original``."""
    return [
        c for c, _ in caption_pool_with_claims(facts, paraphraser, n, key=key, original=original)
    ]


def caption_pool_with_claims(
    facts: ImageFacts, paraphraser: Paraphraser, n: int, *, key: str, original: bool = True
) -> list[tuple[str, frozenset]]:
    """`caption_pool`, each caption with the claims it states (the manifest caption states
    ``("caption", caption)``: it is true of the images with that caption)."""
    caps = paraphraser.captions_with_claims(facts, n, key=key)
    if original and facts.caption:
        own = (facts.caption, frozenset({("caption", facts.caption)}))
        caps = [own] + [c for c in caps if c[0].lower() != facts.caption.lower()]
    return caps
