"""The Python API: encode an image once, answer many text prompts from the cached features."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .data.io import LoadedImage, load_image
from .data.transforms import image_to_tensor, normalize, resize_image
from .modeling.vlseg import ImageFeatures, VLSegModel
from .vocabulary import parse, unfamiliar

MAX_TEXT_CHARS = 1000


@dataclass
class SegmentationResult:
    """The answer to one (image, text) prompt.

    Attributes:
        text: the prompt.
        mask: H x W bool at the input image's resolution (empty when not present).
        probs: H x W float32 per-pixel foreground probability in [0, 1].
        score: presence probability in [0, 1] (is the described thing in the image at all).
        present: ``score >= threshold``.
        area_px: foreground pixels of ``mask``.
        area_mm2: area in mm^2 when the pixel spacing is known, else None.
        n_components: connected components (8-connectivity) of ``mask``.
        unfamiliar: words of ``text`` that the model's training prompts never used (empty when
            the model records no vocabulary): the answer may not reflect them.
    """

    text: str
    mask: np.ndarray
    probs: np.ndarray
    score: float
    present: bool
    area_px: int
    area_mm2: float | None
    n_components: int
    unfamiliar: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        where = f"{self.area_px} px" + (f" ({self.area_mm2:.1f} mm^2)" if self.area_mm2 else "")
        verdict = (
            f"present, {where}, {self.n_components} component(s)" if self.present else ("not found")
        )
        new = f", unfamiliar words: {', '.join(self.unfamiliar)}" if self.unfamiliar else ""
        return f"SegmentationResult({self.text!r}: {verdict}, score={self.score:.3f}{new})"


@dataclass
class ClassificationResult:
    """Zero-shot class probabilities for one image.

    Attributes:
        labels: class names, in the order given.
        probs: float32 probabilities (softmax of ``100 * cos``), summing to 1.
        top: the most probable label.
        logits: float64 ``100 * cos`` per label. Rank images by ``ovr_log_odds(logits)``
            (e.g. for AUROC), not by ``probs``: at CLIP's temperature probabilities saturate to
            exactly 0 or 1 and tie.
    """

    labels: list[str]
    probs: np.ndarray
    top: str
    logits: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        return {lab: float(p) for lab, p in zip(self.labels, self.probs, strict=True)}

    def __repr__(self) -> str:
        best = sorted(self.as_dict().items(), key=lambda kv: -kv[1])[:3]
        return "ClassificationResult(" + ", ".join(f"{k}: {v:.3f}" for k, v in best) + ")"


def ovr_log_odds(logits: np.ndarray) -> np.ndarray:
    """One-vs-rest log-odds ``log p_c / (1 - p_c)`` of softmax(logits), N x C, computed without
    forming probabilities (which saturate at 0 or 1): ranks exactly like ``p_c``."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    for c in range(logits.shape[1]):
        rest = np.delete(logits, c, axis=1)
        m = rest.max(1)
        out[:, c] = logits[:, c] - (m + np.log(np.exp(rest - m[:, None]).sum(1)))
    return out


def _check_texts(text: str | Sequence[str]) -> tuple[list[str], bool]:
    single = isinstance(text, str)
    texts = [text] if single else list(text) if isinstance(text, (list, tuple)) else None
    if texts is None:
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    if not texts:
        raise ValueError("text is an empty list; give at least one description to segment")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"text items must be str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError("text is empty; describe what to segment, e.g. 'the hepatic lesion'")
        if len(t) > MAX_TEXT_CHARS:
            raise ValueError(f"text has {len(t)} characters; keep it under {MAX_TEXT_CHARS}")
    return [t.strip() for t in texts], single


class Segmenter:
    """Referring segmentation and zero-shot classification with an image-feature cache.

    Example:
        >>> import vlseg
        >>> model = vlseg.load()  # the embedded default, phantom-tiny
        >>> model.set_image("ct.png")
        >>> model.segment(text="the hepatic lesion").area_px  # doctest: +SKIP

    Args:
        model: a ``VLSegModel``.
        image_size: square model input size.
        threshold: probability threshold for masks and presence.
        device: torch device (default: CUDA when available).
        name: model name for display.
        channels_last: run convolutions on channels-last (NHWC) tensors, which oneDNN and
            cuDNN execute faster than the default layout (the model's 4-D weights are converted
            in place; results agree to float rounding).
        vocabulary: the words of the model's training prompts (``vlseg.vocabulary``); each
            result then names the prompt's words outside it. None (default): not known.
    """

    def __init__(
        self,
        model: VLSegModel,
        *,
        image_size: int,
        threshold: float = 0.5,
        device: str | torch.device | None = None,
        name: str = "custom",
        channels_last: bool = True,
        vocabulary: Iterable[str] | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # The conversion is in place: a later Segmenter on the same model object with the
        # other setting converts it back (answers stay the same; only speed differs).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
        self.image_size = image_size
        self.threshold = threshold
        self.name = name
        self._image: LoadedImage | None = None
        self._features: ImageFeatures | None = None
        self.encoder_calls = 0  # how many times the image encoder ran (for tests and benchmarks)
        self._class_cache: dict[tuple, np.ndarray] = {}
        # how to load this model again, {"model", "adapter"} (set by ``load``; recorded by
        # retrieval indexes built with it); None for a Segmenter built in code
        self.source: dict[str, str | None] | None = None
        # Prompt learners insert their prompts through forward hooks on shared modules, so two
        # threads running the same prompted model at once (the chat app serves two requests
        # concurrently) would each see the other's hooks: such models run one call at a time.
        self._prompted_lock = threading.Lock()

    def _serialised(self):
        """A lock while a prompt learner is attached, else a no-op context."""
        if getattr(self.model, "prompter", None) is None:
            return contextlib.nullcontext()
        return self._prompted_lock

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, image_size={self.image_size}, device={self.device})"

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, images: Sequence[LoadedImage]) -> torch.Tensor:
        """Loaded images -> B x 3 x S x S normalised tensor."""
        vis = self.model.vision
        batch = [
            normalize(resize_image(image_to_tensor(im.rgb), self.image_size), vis.mean, vis.std)
            for im in images
        ]
        return torch.stack(batch).to(self.device).contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def _encode(self, images: Sequence[LoadedImage]) -> ImageFeatures:
        self.encoder_calls += 1
        x = self.preprocess(images)
        with self._serialised():
            return self.model.encode_image(x)

    def set_image(self, image) -> Segmenter:
        """Encode and cache one image (path, PIL image, numpy array or LoadedImage)."""
        loaded = load_image(image)
        self._features = self._encode([loaded])
        self._image = loaded
        return self

    @torch.no_grad()
    def image_embedding(self, image=None) -> np.ndarray:
        """L2-normalised CLIP image embedding(s): E for one image, N x E for a list; None uses
        the cached image (no encoder run)."""
        if isinstance(image, (list, tuple)):
            feats = self._encode([load_image(im) for im in image])
            return F.normalize(feats.embedding.float(), dim=-1).cpu().numpy()
        if image is not None:
            self.set_image(image)
        if self._features is None:
            raise RuntimeError("no image: pass image=... or call set_image(image) first")
        return F.normalize(self._features.embedding.float(), dim=-1)[0].cpu().numpy()

    @torch.no_grad()
    def text_embedding(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised CLIP text embeddings, N x E."""
        texts, _ = _check_texts(list(texts))
        tok = self.model.text.tokenize(texts)
        # through the model, so a prompt learner's context applies (unconditioned for CoCoOp)
        with self._serialised():
            emb = self.model.encode_text(tok["ids"].to(self.device), tok["mask"].to(self.device))
        return F.normalize(emb.embedding.float(), dim=-1).cpu().numpy()

    def class_embeddings(self, labels: Sequence[str], templates=None) -> np.ndarray:
        """Template-averaged, L2-normalised class embeddings (C x E), cached per (labels,
        templates) as in open_clip's zero-shot classifier."""
        from prompts import load_templates

        temps = tuple(load_templates(templates))
        key = (tuple(labels), temps)
        if key not in self._class_cache:
            per_class = []
            for label in labels:
                emb = self.text_embedding([t.format(label) for t in temps]).mean(0)
                per_class.append(emb / max(np.linalg.norm(emb), 1e-12))
            self._class_cache[key] = np.stack(per_class)
        return self._class_cache[key]

    def classify(self, image=None, labels: Sequence[str] = (), templates=None):
        """Zero-shot classification: softmax over ``100 * image @ classes.T``.

        Args:
            image: path/PIL/array, a list of them, or None for the cached image.
            labels: class names (at least two), e.g. ``["melanoma", "nevus"]``.
            templates: a template-set name (``dermoscopy``, ``ct``, ``generic``), a list of
                strings with ``{}``, or None for ``generic``.

        Returns:
            A ``ClassificationResult``, or a list of them for a list of images.
        """
        if isinstance(labels, str) or len(labels) < 2:
            raise ValueError(
                "give at least two labels to choose between, e.g. ['melanoma', 'nevus']"
            )
        labels = [str(lab).strip() for lab in labels]
        if not all(labels):
            raise ValueError("labels must be non-empty strings")
        classes = self.class_embeddings(labels, templates)
        emb = self.image_embedding(image)
        logits = 100.0 * np.atleast_2d(emb).astype(np.float64) @ classes.T.astype(np.float64)
        shifted = logits - logits.max(1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(1, keepdims=True)
        out = [
            ClassificationResult(labels, p.astype(np.float32), labels[int(np.argmax(lg))], lg)
            for p, lg in zip(probs, logits, strict=True)
        ]
        return out if isinstance(image, (list, tuple)) else out[0]

    def reset_image(self) -> None:
        self._image, self._features = None, None

    @property
    def has_image(self) -> bool:
        return self._features is not None

    # -- segmentation -----------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, image=None, text: str | Sequence[str] = "", *, spacing=None):
        """Segment what ``text`` describes.

        Args:
            image: path, PIL image, HxW/HxWx3 numpy array; or a list of them (one result list
                per image); None to use the image given to :meth:`set_image`.
            text: a description or a list of descriptions.
            spacing: pixel spacing (row_mm, col_mm) overriding the image's own, for mm^2.

        Returns:
            A ``SegmentationResult`` for one image and one text, a list for a list of texts, and
            a list of those for a list of images.
        """
        texts, single_text = _check_texts(text)
        if isinstance(image, (list, tuple)):
            loaded = [load_image(im) for im in image]
            feats = self._encode(loaded)
            out = []
            for i, im in enumerate(loaded):
                f = feats.select(torch.tensor([i], device=self.device))
                res = self._answer(f, im, texts, spacing)
                out.append(res[0] if single_text else res)
            return out
        if image is not None:
            self.set_image(image)
        if self._features is None or self._image is None:
            raise RuntimeError("no image: pass image=... or call set_image(image) first")
        res = self._answer(self._features, self._image, texts, spacing)
        return res[0] if single_text else res

    def _answer(self, feats: ImageFeatures, image: LoadedImage, texts: list[str], spacing):
        tok = self.model.text.tokenize(texts)
        with self._serialised():
            txt = self.model.encode_text(
                tok["ids"].to(self.device), tok["mask"].to(self.device), feats.embedding
            )
            out = self.model.decode(feats, txt)
        h, w = image.size
        probs = (
            torch.sigmoid(
                F.interpolate(out["logits"], size=(h, w), mode="bilinear", align_corners=False)
            )[:, 0]
            .float()
            .cpu()
            .numpy()
        )
        scores = torch.sigmoid(out["presence"]).float().cpu().numpy()
        spacing = spacing or image.spacing
        return [
            self._result(t, p, float(s), spacing)
            for t, p, s in zip(texts, probs, scores, strict=True)
        ]

    def _result(self, text: str, probs: np.ndarray, score: float, spacing) -> SegmentationResult:
        present = score >= self.threshold
        mask = (probs > self.threshold) & present
        area = int(mask.sum())
        n_comp = int(ndimage.label(mask, structure=np.ones((3, 3)))[1]) if area else 0
        mm2 = area * float(spacing[0]) * float(spacing[1]) if spacing else None
        return SegmentationResult(
            text=text,
            mask=mask,
            probs=probs.astype(np.float32),
            score=score,
            present=present and area > 0,
            area_px=area,
            area_mm2=mm2,
            n_components=n_comp,
            unfamiliar=unfamiliar(text, self.vocabulary),
        )


def _where(name_or_path) -> str | None:
    """A registered name as given, a directory as an absolute path (usable from anywhere)."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else str(name_or_path)


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    device=None,
    threshold: float = 0.5,
) -> Segmenter:
    """Load a model by registered name, checkpoint directory, or None for the embedded default.

    Args:
        name_or_path: registered name or checkpoint directory; None = the embedded default, or
            with ``adapter`` the base model the adapter was tuned on.
        adapter: a ``vlseg tune`` adapter directory (e.g. ``runs/tune/best``) to apply.

    Raises:
        ValueError: unknown name (the message lists the available ones), or an adapter tuned on
            another base model (both weight hashes named).
    """
    from .checkpoint import resolve

    model, cfg, meta = resolve(name_or_path, adapter=adapter)
    name = cfg.name if adapter is None else f"{cfg.name}+{meta['adapter']['method']}"
    vocabulary = parse(meta.get("vocabulary"))  # None (unknown) when the checkpoint has none
    if vocabulary is not None and adapter is not None:
        vocabulary |= parse(meta["adapter"].get("vocabulary")) or frozenset()
    seg = Segmenter(
        model,
        image_size=cfg.image_size,
        threshold=threshold,
        device=device,
        name=name,
        vocabulary=vocabulary,
    )
    seg.source = {"model": _where(name_or_path), "adapter": _where(adapter)}
    return seg
