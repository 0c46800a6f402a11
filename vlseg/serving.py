"""How a checkpoint is served: the settings that travel with its weights.

A checkpoint's ``config.yaml`` holds a ``serving:`` section next to ``model:``. Whatever needs
it (the Python API, ``vlseg eval``/``predict``, the chat) reads it from the loaded model, so no
caller has to know a model's threshold, CT window or default labels. The input size and the
normalisation (mean/std) are part of the model config itself (``image_size``, the tower's
``preprocess``), because they change the weights' meaning; everything here can be re-tuned on
validation data without retraining.

Example ``config.yaml``::

    serving:
      threshold: 0.5           # presence (after calibration) and per-pixel mask threshold
      calibration: null        # or {method: temperature, temperature: 1.7}
      window: [45.0, 400.0]    # CT window (level, width) in HU the model was trained with
      labels: [hepatic lesion, normal liver, melanoma, nevus]   # default "what is this?" choices
      templates: generic       # template set for those labels
      label_sets:              # named label sets for zero-shot evaluation
        ct: {labels: phantom-ct, templates: ct}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .refine import DEFAULT as REFINE_DEFAULT
from .refine import check_refine

CALIBRATION_METHODS = ("temperature", "platt")


@dataclass
class ServingConfig:
    """What a checkpoint needs in order to be served the way it was validated.

    Attributes:
        threshold: in [0, 1]; a prompt is "present" when its calibrated presence probability is
            >= threshold, and a pixel is foreground when its probability is > threshold.
        calibration: maps the presence logit z to a calibrated logit: ``{"method":
            "temperature", "temperature": T}`` gives z / T, ``{"method": "platt", "a": a, "b":
            b}`` gives a * z + b; None leaves z as it is.
        window: CT window ``(level, width)`` in Hounsfield units that the model's training
            images were displayed with; applied to HU inputs (DICOM, NIfTI, HU arrays), whose
            own display window is used for showing them only. None: the file's own window.
        labels: the default class names for zero-shot "what is this?" questions.
        templates: template set (``prompts/templates``) used with ``labels``.
        label_sets: named label sets, ``{name: {"labels": label-set name or {code: prompt},
            "templates": template-set name}}``.
        unsure: ``(low, high)``: a calibrated presence probability in [low, high) is answered
            "unsure" rather than present/absent; None: never unsure.
        ood_threshold: an image whose out-of-domain score (``vlseg.ood``) exceeds it is
            answered "out-of-domain"; None: not checked.
        unfamiliar_unsure: a prompt none of whose content words the model's training prompts
            used (a Latin synonym, a typo, a coined name: "segment the hepar";
            ``vlseg.vocabulary.ungrounded``) is answered "unsure" instead of "present" (its mask
            kept as the tentative answer): nothing in it was grounded in training. Only when
            the model records its vocabulary.
        refine: edge-aware refinement of the upsampled mask probabilities with the image as
            guide (``vlseg.refine``): ``{"method": "guided", "radius": R, "eps": E}`` with the
            window radius R in decoder cells; None: the bilinearly upsampled probabilities.
    """

    threshold: float = 0.5
    calibration: dict[str, Any] | None = None
    window: tuple[float, float] | None = None
    labels: list[str] = field(default_factory=list)
    templates: str = "generic"
    label_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    unsure: tuple[float, float] | None = None
    ood_threshold: float | None = None
    unfamiliar_unsure: bool = True
    refine: dict[str, Any] | None = field(default_factory=lambda: dict(REFINE_DEFAULT))

    def __post_init__(self) -> None:
        if self.unsure is not None:
            low, high = (float(v) for v in self.unsure)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"serving unsure must be (low, high) in [0, 1], got {self.unsure}")
            self.unsure = (low, high)
        if self.ood_threshold is not None:
            self.ood_threshold = float(self.ood_threshold)
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"serving threshold must be in [0, 1], got {self.threshold!r}")
        self.threshold = float(self.threshold)
        if self.window is not None:
            level, width = (float(v) for v in self.window)
            if not (math.isfinite(level) and math.isfinite(width) and width > 0):
                raise ValueError(f"serving window must be (level, width > 0), got {self.window}")
            self.window = (level, width)
        cal = self.calibration
        if cal is not None:
            method = cal.get("method") if isinstance(cal, dict) else None
            if method not in CALIBRATION_METHODS:
                raise ValueError(
                    f"serving calibration {cal!r}: method must be one of "
                    f"{', '.join(CALIBRATION_METHODS)}"
                )
            if method == "temperature" and not float(cal.get("temperature", 0)) > 0:
                raise ValueError(f"temperature calibration needs temperature > 0, got {cal!r}")
            if method == "platt" and not {"a", "b"} <= set(cal):
                raise ValueError(f"platt calibration needs 'a' and 'b', got {cal!r}")
        self.labels = [str(x) for x in self.labels]
        self.refine = check_refine(self.refine)

    def verdict(
        self,
        score: float,
        found: bool,
        ood_score: float | None = None,
        *,
        unfamiliar: bool = False,
    ) -> str:
        """present / absent / unsure / out-of-domain for a calibrated presence probability,
        whether the mask is non-empty, the image's out-of-domain score, and whether none of the
        prompt's content words was in the model's training prompts (``unfamiliar``)."""
        if ood_score is not None and self.ood_threshold is not None:
            if ood_score > self.ood_threshold:
                return "out-of-domain"
        if self.unsure is not None and self.unsure[0] <= score < self.unsure[1]:
            return "unsure"
        present = score >= self.threshold and found
        if present and unfamiliar and self.unfamiliar_unsure:
            return "unsure"
        return "present" if present else "absent"

    def calibrate(self, presence_logits):
        """Calibrated presence logits (same type and shape as the input: tensor or array)."""
        cal = self.calibration
        if cal is None:
            return presence_logits
        if cal["method"] == "temperature":
            return presence_logits / float(cal["temperature"])
        return presence_logits * float(cal["a"]) + float(cal["b"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"] = None if self.window is None else list(self.window)
        out["unsure"] = None if self.unsure is None else list(self.unsure)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, where: str = "serving") -> ServingConfig:
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**data)


def serving_of(meta: dict[str, Any]) -> ServingConfig:
    """The serving settings recorded in a checkpoint's ``config.yaml`` (defaults when absent)."""
    return ServingConfig.from_dict(meta.get("serving"), where="config.yaml: serving")
