"""Reply texts: fixed messages, measurements, escaping, and file names from uploads."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.predictor import SegmentationResult
from vlseg.volume import VolumeResult

RESEARCH_NOTICE = (
    "Research use only. vlseg is not a medical device: its outputs are not validated for "
    "diagnosis or treatment decisions. The default model was trained on synthetic phantoms."
)
SUPPORTED = (
    "PNG, JPEG, BMP, TIFF, DICOM (.dcm) or NIfTI (.nii/.nii.gz); a CT/MR volume as a 3-D NIfTI "
    "or a .zip of one DICOM series"
)

NO_IMAGE_TEXT = (
    "Please upload an image first: use the 📎 button in the message box, or click one of the "
    "examples. Then ask, e.g., *segment the liver*. Type *help* for more."
)
HELP_TEXT = f"""I segment what you describe in a medical image and measure it.

1. **Upload an image** with the 📎 button ({SUPPORTED}), or click an example.
2. **Ask**, for example:
   - *segment the hepatic lesion*: the mask, its area and number of connected components,
     or "not found" when the model judges it absent;
   - *the liver and both kidneys*: several targets at once (commas or "and"); follow up with
     *and the spleen?*;
   - *how big is the liver?* or *how many lesions are there?*: the same, answered as a size or
     a count;
   - *what is this?* or *is it a melanoma or a nevus?*: zero-shot classification;
   - *find similar cases*: nearest cases in the case index (when one is loaded);
   - add *spacing 0.8 mm* to any message to get areas in mm² for images without it.
3. **Volumes** (a 3-D NIfTI or a .zip of a DICOM series): every slice is encoded once (a
   progress bar shows how far), then *segment the hepatic lesion* gives the volume in mL, the
   longest diameters in mm, the number of separate findings and the slices holding them;
   *how big is it?* or *how many lesions?* answer from the same result. Move the **Slice**
   slider to see any slice with the outline; the mask downloads as NIfTI, aligned with your
   file.

Follow-up questions reuse the encoded image, so they are fast; *start over* forgets the image.
Masks can be downloaded as PNG files at the image's own resolution (NIfTI for a volume).

_{RESEARCH_NOTICE}_"""

GREETING_TEXT = (
    "Hello! I segment and measure what you describe in a medical image. Upload an image with the "
    "📎 button, then ask, e.g., *segment the liver* or *how big is the hepatic lesion?* Type "
    "*help* for more."
)
GREETING_WITH_IMAGE_TEXT = (
    "Hello! What should I look at in this image? For example *segment the liver*, *how many "
    "lesions are there?* or *what is this?* Type *help* for more."
)
THANKS_TEXT = (
    "You're welcome. Ask about another structure, or upload a new image whenever you like."
)
UNKNOWN_TEXT = (
    "Sorry, I did not understand that. I can **segment** a structure (*segment the liver*), "
    "**measure or count** it (*how big is the spleen?*, *how many lesions are there?*), "
    "**classify** the image (*is it a melanoma or a nevus?*) and **find similar cases**. Type "
    "*help* for more."
)
RESET_TEXT = (
    "Done: I forgot the image and its results. Upload a new image with the 📎 button to start "
    "again."
)
RESET_NO_IMAGE_TEXT = "There is no image to forget. Upload one with the 📎 button to start."

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    return _CONTROL.sub(" ", text).strip()


def md_escape(text: str) -> str:
    """Escape markdown/HTML in text echoed back to the user."""
    return re.sub(r"([\\`*_{}\[\]<>#|~])", r"\\\1", text)


def join_notes(notes: list[str], body: str) -> str:
    return "\n\n".join([body, *notes]) if notes else body


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def area_text(r: SegmentationResult) -> str:
    px = f"{r.area_px:,} px"
    return f"{px} ({r.area_mm2:,.1f} mm²)" if r.area_mm2 is not None else px


def in_unit(r: SegmentationResult | VolumeResult, unit: str) -> str | None:
    """``r``'s size in the unit a question asked for ("cm": cm² or cm³ and cm diameters;
    "ml": mL; "mm": mm² / mm), as one clause, or None when there is nothing to convert (not
    found, or no spacing: the reply then says sizes are in pixels)."""
    if not unit or not r.present:
        return None
    name = f"**{md_escape(r.text)}**"
    if isinstance(r, VolumeResult):
        if r.spacing is None or r.volume_ml is None:
            return None
        if unit == "mm":
            size = f"{r.volume_ml * 1000:,.0f} mm³"
        else:  # 1 mL = 1 cm³
            size = f"{r.volume_ml:,.2f} cm³ (= mL)"
        if r.diameters_mm:
            scale, u = (0.1, "cm") if unit in ("cm", "ml") else (1.0, "mm")
            long, short = r.diameters_mm[0]
            size += f", largest diameters {long * scale:.1f} × {short * scale:.1f} {u}"
        return f"{name} in {'mm' if unit == 'mm' else 'cm'}: {size}"
    if r.area_mm2 is None:
        return None
    if unit == "ml":
        return None  # an area has no volume; the measure reply says so
    if unit == "cm":
        return f"{name} in cm: {r.area_mm2 / 100:,.2f} cm²"
    return f"{name} in mm: {r.area_mm2:,.1f} mm²"


def count_text(r: SegmentationResult) -> str:
    """A count question's answer on an image: "**the hepatic lesions**: 2 found (separate
    regions), 1,234 px (345.6 mm²) in all"."""
    if not r.present:
        return describe(r)
    n = r.n_components
    return f"**{md_escape(r.text)}**: {n} found (separate regions), {area_text(r)} in all"


def slices_text(r: VolumeResult) -> str:
    """On which slices a volume answer has findings: "**the liver**: on 23 of 64 slices
    (12–34)"."""
    name = f"**{md_escape(r.text)}**"
    if r.verdict == "out-of-domain" or not r.present:
        return describe_volume(r)
    n = len(r.slices)
    scores = getattr(r, "slice_scores", None)
    of = f" of {len(scores)}" if scores is not None else ""
    return f"{name}: on {n}{of} slice{'s' if n != 1 else ''} ({slice_ranges(r.slices)})"


def short_measure(r: SegmentationResult) -> str:
    if r.verdict == "out-of-domain":
        return "out of domain"
    if r.verdict == "unsure" and r.area_px:
        return "unsure"
    if not r.present:
        return "not found" if r.verdict == "absent" else "unsure"
    return f"{r.area_mm2:,.1f} mm²" if r.area_mm2 is not None else f"{r.area_px:,} px"


def _unsure_text(name: str, r: SegmentationResult | VolumeResult, tentative: str) -> str:
    """An "unsure" line: why, when the prompt has words the model does not know and it still
    found something (a high presence with unknown words is not "maybe there")."""
    if r.unfamiliar and r.score >= 0.5:
        words = ", ".join(f"*{md_escape(w)}*" for w in r.unfamiliar[:4])
        return (
            f"{name}: unsure: this model was not trained on {words}, so what it outlines "
            f"may not be what you mean (presence {r.score:.2f}){tentative}"
        )
    return f"{name}: unsure whether it is there (presence {r.score:.2f}){tentative}"


def describe(r: SegmentationResult) -> str:
    """One reply line, e.g. "**the liver**: area 1,234 px (345.6 mm²), 1 connected component"."""
    name = f"**{md_escape(r.text)}**"
    if r.verdict == "out-of-domain":
        return (
            f"{name}: no answer: this image is unlike what this model was trained on, so any "
            "mask would be a guess"
        )
    if r.verdict == "unsure":
        tentative = f"; a tentative outline covers {area_text(r)}" if r.area_px else ""
        return _unsure_text(name, r, tentative)
    if not r.present:
        return f"{name}: not found (presence {r.score:.2f})"
    comps = f"{r.n_components} connected component" + ("s" if r.n_components != 1 else "")
    return f"{name}: area {area_text(r)}, {comps} (presence {r.score:.2f})"


def slice_ranges(slices: list[int]) -> str:
    """[3, 4, 5, 9] -> "3–5, 9"; more than six runs are cut short with "…"."""
    runs: list[str] = []
    start = prev = None
    for k in [*slices, None]:
        if start is not None and (k is None or k != prev + 1):
            runs.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = None
        if k is not None and start is None:
            start = k
        prev = k
    return ", ".join(runs[:6]) + (", …" if len(runs) > 6 else "") if runs else "none"


def volume_text(r: VolumeResult, ml: float | None = None) -> str:
    """``r``'s volume (or ``ml``, one component's) in mL, or in voxels when the spacing is
    unknown."""
    if r.spacing is None:
        voxels = r.voxels if ml is None else int(ml)  # component sizes are voxel counts then
        return f"{voxels:,} voxels"
    value = r.volume_ml if ml is None else ml
    return f"{value:,.2f} mL" if value < 10 else f"{value:,.1f} mL"


def short_measure_volume(r: VolumeResult) -> str:
    """A legend entry: "14.2 mL", "not found", "unsure", "out of domain"."""
    if r.verdict == "out-of-domain":
        return "out of domain"
    if r.verdict == "unsure" and r.voxels:
        return "unsure"
    if not r.present:
        return "not found" if r.verdict == "absent" else "unsure"
    return volume_text(r)


def describe_volume(r: VolumeResult) -> str:
    """One reply line for a volume, e.g. "**the hepatic lesion**: present: 2 separate regions,
    14.2 mL in all (9.1 + 5.1 mL); largest 31.0 × 24.5 mm (slice 17); on slices 12–21
    (presence 0.93)"."""
    name = f"**{md_escape(r.text)}**"
    if r.verdict == "out-of-domain":
        return (
            f"{name}: no answer: this volume is unlike what this model was trained on, so any "
            "mask would be a guess"
        )
    if r.verdict == "unsure":
        tentative = (
            f"; a tentative outline covers {volume_text(r)} on slices {slice_ranges(r.slices)}"
            if r.voxels
            else ""
        )
        return _unsure_text(name, r, tentative)
    if not r.present:
        return f"{name}: not found (presence {r.score:.2f})"
    n = r.n_components
    if n == 1:
        size = f"1 region, {volume_text(r)}"
    else:
        parts = " + ".join(volume_text(r, v) for v in r.component_volumes_ml[:4])
        more = " + …" if n > 4 else ""
        size = f"{n} separate regions, {volume_text(r)} in all ({parts}{more})"
    text = f"{name}: present: {size}"
    if r.diameters_mm:
        unit = "mm" if r.spacing is not None else "px"
        long, short = r.diameters_mm[0]
        which = "largest " if n > 1 else ""
        text += f"; {which}{long:.1f} × {short:.1f} {unit} across (slice {r.diameter_slices[0]})"
    return text + f"; on slices {slice_ranges(r.slices)} (presence {r.score:.2f})"


def unfamiliar_note(results: list[SegmentationResult]) -> str | None:
    """A caution naming prompt words the model never saw in training, or None."""
    words: list[str] = []
    for r in results:
        words += [w for w in r.unfamiliar if w not in words]
    if not words:
        return None
    listed = ", ".join(f"*{md_escape(w)}*" for w in words[:8])
    several = len(words) > 1
    return (
        f"_Note: this model was not trained on the word{'s' if several else ''} {listed}, so "
        f"the answer may not reflect {'them' if several else 'it'}. If it looks wrong, rephrase "
        "with more common terms._"
    )


_VAGUE = re.compile(
    r"^(?:(?:the|a|an|any|some|all|all\s+the)\s+)?(?:lesions?|tumou?rs?|masse?s?|findings?|"
    r"abnormalit(?:y|ies)|nodules?|spots?|growths?)$",
    re.IGNORECASE,
)


def vague_note(results: list) -> str | None:
    """A hint when a bare finding noun ("is there a lesion?") was not found: the model knows
    findings by where they are, so "the lesion" alone scores low where "the hepatic lesion"
    does not."""
    vague = [
        r.text
        for r in results
        if _VAGUE.match(r.text.strip()) and r.verdict in ("absent", "unsure")
    ]
    if not vague:
        return None
    return (
        f"_*{md_escape(vague[0])}* alone is vague for this model: name where it is, e.g. *the "
        "hepatic lesion* or *the renal cyst* on a CT, *the skin lesion* on a dermoscopy photo._"
    )


def caution_text(results: list) -> str | None:
    """The cautions a segmentation reply ends with (unknown words, a vague finding noun)."""
    notes = [n for n in (unfamiliar_note(results), vague_note(results)) if n]
    return "\n\n".join(notes) or None


def file_path(f: Any) -> Any:
    if isinstance(f, dict):
        return f.get("path") or f.get("name")
    return getattr(f, "path", f)


def file_name(f: Any) -> str:
    if isinstance(f, dict) and f.get("orig_name"):
        return str(f["orig_name"])
    p = file_path(f)
    if isinstance(p, (str, os.PathLike)):
        return Path(p).name or "the upload"
    return "the upload"


def readable_error(exc: Exception, path: Any, name: str) -> str:
    """The loader's message without server paths."""
    msg = str(exc) or type(exc).__name__
    if isinstance(path, (str, os.PathLike)):
        msg = msg.replace(str(path), name)
    msg = re.sub(r"(/[\w.\-]+)+/", "", msg)  # any other absolute directory
    msg = re.sub(r"\b[A-Z]\w*(?:Error|Exception):\s*", "", msg)  # Python class names
    return md_escape(msg[:400])


def _phrase(items: tuple[str, ...] | list[str]) -> str:
    """Items in italics, escaped, joined: *a*; *a* and *b*; *a*, *b* and *c*."""
    quoted = [f"*{md_escape(x)}*" for x in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def reading_text(intent: Any) -> str:
    """One reading of a message in words, for "Did you mean ...?": "segment *the liver*"."""
    kind, targets = intent.kind, tuple(intent.targets)
    if kind == "segment":
        if getattr(intent, "inside", False) and len(targets) == 2:
            return f"check whether {_phrase(targets[:1])} lies inside {_phrase(targets[1:])}"
        return f"segment {_phrase(targets)}" if targets else "segment something in the image"
    if kind == "measure":
        what = {"count": "count", "volume": "measure the volume of", "area": "measure the area "
                "of"}.get(intent.measure, "measure")  # fmt: skip
        return f"{what} {_phrase(targets)}" if targets else f"{what} the last result"
    if kind == "classify":
        return (
            f"classify the image as {' or '.join(f'*{md_escape(x)}*' for x in targets)}"
            if targets
            else "classify the image"
        )
    if kind == "similar":
        return f"find the {intent.k} most similar cases"
    if kind == "reset":
        return "start over with a new image"
    return {"help": "show the help"}.get(kind, kind)


def clarify_text(readings: tuple[Any, ...] | list[Any]) -> str:
    """ "Did you mean ...?" offering one or two readings."""
    if len(readings) == 1:
        return (
            f"I'm not sure I understood. Did you mean: {reading_text(readings[0])}? Reply *yes* "
            "to go ahead, or rephrase."
        )
    first, second = (reading_text(r) for r in readings[:2])
    return (
        f"I'm not sure I understood. Did you mean:\n\n1. {first}\n2. {second}\n\nReply *yes* "
        "(or *1*) for the first, *2* for the second, or rephrase."
    )


def inside_text(inner: Any, outer: Any) -> str:
    """Whether the finding ``inner`` lies inside ``outer``, from their masks (2-D or 3-D)."""
    a, b = f"**{md_escape(inner.text)}**", f"**{md_escape(outer.text)}**"
    if not inner.present:
        return f"I did not find {a}, so I cannot say whether it lies inside {b}."
    if not outer.present:
        return f"I did not find {b}, so I cannot say whether {a} lies inside it."
    m_in, m_out = np.asarray(inner.mask, bool), np.asarray(outer.mask, bool)
    if m_in.shape != m_out.shape or not m_in.any():
        return f"I cannot compare {a} with {b}."
    share = float((m_in & m_out).sum()) / float(m_in.sum())
    if share >= 0.9:
        return f"Yes: {a} lies inside {b} ({share:.0%} of it is within the outline)."
    if share >= 0.5:
        return f"Mostly: {share:.0%} of {a} lies inside {b}."
    if share > 0:
        return f"Only partly: {share:.0%} of {a} lies inside {b}."
    return f"No: {a} does not overlap {b}."
