"""The Python API: encode an image once, answer many text prompts from the cached features.

``Segmenter`` caches and calls, as segment-anything's predictor does: the computation lives in
:mod:`vlseg.inference` (``encode``, ``decode``, ``postprocess``), which evaluation, the CLI and the
chat share, and what a checkpoint needs to be served travels with it (:mod:`vlseg.serving`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.io import LoadedImage, load_image
from .data.medical_io import is_dicom, is_nifti
from .data.transforms import image_to_tensor, normalize, resize_image
from .data.volume_io import Volume, is_volume_source, read_volume
from .inference import (
    ClassificationResult,
    Decoded,
    EncodedImage,
    SegmentationResult,
    TextCache,
    decode,
    encode,
    ovr_log_odds,
    postprocess,
    zero_shot,
)
from .modeling.vlseg import VLSegModel
from .ood import OODDetector
from .referring import Selector, parse_selector, plan_referring, resolve
from .requests import model_text
from .serving import ServingConfig, serving_of
from .vocabulary import parse
from .volume import EncodedVolume, VolumeResult, encode_volume, segment_volume

__all__ = [
    "ClassificationResult",
    "EncodedImage",
    "SegmentationResult",
    "Segmenter",
    "VolumeResult",
    "load",
    "ovr_log_odds",
]

MAX_TEXT_CHARS = 1000


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


# names accepted for ``text_dtype``
TEXT_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class Segmenter:
    """Referring segmentation and zero-shot classification with an image-feature cache.

    Example:
        >>> import vlseg
        >>> model = vlseg.load()  # the embedded default, phantom-tiny
        >>> model.set_image("ct.png")
        >>> model.segment(text="the hepatic lesion").area_px  # doctest: +SKIP

    Many images at once (e.g. a service with one model and many users): ``encoded =
    model.encode(image)`` returns the features without touching the cache, and
    ``model.segment(encoded, text)`` / ``model.classify(encoded, labels)`` answer from them.

    Args:
        model: a ``VLSegModel``.
        image_size: square model input size.
        serving: how the checkpoint is served (threshold, calibration, CT window, default
            labels); default ``ServingConfig()``.
        threshold: overrides ``serving.threshold`` (probability threshold for presence and
            masks).
        device: torch device (default: CUDA when available).
        name: model name for display.
        channels_last: run convolutions on channels-last (NHWC) tensors, which oneDNN and
            cuDNN execute faster than the default layout (the model's 4-D weights are converted
            in place; results agree to float rounding).
        vocabulary: the words of the model's training prompts (``vlseg.vocabulary``); each
            result then names the prompt's words outside it. None (default): not known.
        ood: an out-of-domain fit (``vlseg.ood``); each encoded image then gets a score, and
            ``serving.ood_threshold`` turns a high one into the "out-of-domain" verdict.
        text_dtype: ``"bfloat16"`` converts the text tower's weights in place (a new prompt
            reads half the bytes; see ``load``); None leaves them as they are.

    Prompts' text features are cached (``text_cache``); after changing the model's weights in
    place, call ``text_cache.clear()``.

    A prompt naming one instance of a target ("the largest hepatic lesion", "the second lesion
    from the top", "the lesion nearest the aorta", "the most superior lesion") is answered by
    segmenting the target ("the hepatic lesions", and "the aorta") on the same encoded image
    and keeping one connected component (:mod:`vlseg.referring`); set ``referring = False`` to
    send every prompt to the model as it is.

    A prompt typed as a request ("can you outline the spleen?", "I need a mask of the
    backbone") reaches the model as the description inside it ("the spleen"; see
    :mod:`vlseg.requests`), unless its request form is one the model was trained with
    (``requests``, recorded in the checkpoint); results keep the text as given.
    ``strip_requests = False`` sends the whole text.
    """

    referring: bool = True
    strip_requests: bool = True

    def __init__(
        self,
        model: VLSegModel,
        *,
        image_size: int,
        serving: ServingConfig | None = None,
        threshold: float | None = None,
        device: str | torch.device | None = None,
        name: str = "custom",
        channels_last: bool = True,
        vocabulary: Iterable[str] | None = None,
        ood: OODDetector | None = None,
        text_dtype: str | torch.dtype | None = None,
        requests: dict | None = None,
    ):
        self.ood = ood
        self.requests = requests
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # The conversion is in place: a later Segmenter on the same model object with the
        # other setting converts it back (answers stay the same; only speed differs).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
        self.image_size = image_size
        self.serving = dataclasses.replace(serving or ServingConfig())
        if threshold is not None:
            self.serving = dataclasses.replace(self.serving, threshold=threshold)
        self.name = name
        self._encoded: EncodedImage | None = None
        self.encoder_calls = 0  # how many times the image encoder ran (for tests and benchmarks)
        self._class_cache: dict[tuple, np.ndarray] = {}
        # text features per prompt (bypassed while a prompt learner is attached)
        self.text_cache = TextCache()
        if text_dtype is not None:
            self.set_text_dtype(text_dtype)
        # how to load this model again, {"model", "adapter"} (set by ``load``; recorded by
        # retrieval indexes built with it); None for a Segmenter built in code
        self.source: dict[str, str | None] | None = None
        # Prompt learners insert their prompts through forward hooks on shared modules, so two
        # threads running the same prompted model at once (the chat app serves two requests
        # concurrently) would each see the other's hooks: such models run one call at a time.
        self._prompted_lock = threading.Lock()

    def set_text_dtype(self, text_dtype: str | torch.dtype) -> None:
        """Keep the text tower's weights in ``text_dtype`` (``"bfloat16"`` or ``"float32"``; in
        place, like the layout); cached text features are dropped."""
        dtype = TEXT_DTYPES.get(text_dtype) if isinstance(text_dtype, str) else text_dtype
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"text_dtype={text_dtype!r}: use 'float32' or 'bfloat16' (bf16 pays on CPUs with "
                "AVX512-BF16 or AMX, and on GPUs)"
            )
        if dtype != torch.float32 and getattr(self.model, "prompter", None) is not None:
            raise ValueError(
                "text_dtype='bfloat16' with a prompt learner attached: the learner's context "
                "tokens are float32; load the adapter without text_dtype"
            )
        self.model.text.to(dtype)
        self.text_cache.clear()

    @property
    def threshold(self) -> float:
        """Presence and mask probability threshold (``serving.threshold``)."""
        return self.serving.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.serving = dataclasses.replace(self.serving, threshold=value)

    def _serialised(self):
        """A lock while a prompt learner is attached, else a no-op context."""
        if getattr(self.model, "prompter", None) is None:
            return contextlib.nullcontext()
        return self._prompted_lock

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, image_size={self.image_size}, device={self.device})"

    # -- images ---------------------------------------------------------------------------
    def load_image(self, image, **kwargs) -> LoadedImage:
        """Read an image the way this model was validated: a DICOM/NIfTI file's Hounsfield
        units get the model's CT window (``serving.window``), not the file's display window.

        Args:
            image: path, PIL image, HxW/HxWx3 numpy array or ``LoadedImage``.
            kwargs: passed to :func:`vlseg.data.io.load_image` (e.g. ``max_pixels``).
        """
        if isinstance(image, LoadedImage):
            return image
        if self.serving.window is not None and "window" not in kwargs and _is_medical(image):
            kwargs["window"] = self.serving.window
        return load_image(image, **kwargs)

    def preprocess(self, images: Sequence[LoadedImage]) -> torch.Tensor:
        """Loaded images -> B x 3 x S x S normalised tensor."""
        vis = self.model.vision
        batch = [
            normalize(resize_image(image_to_tensor(im.rgb), self.image_size), vis.mean, vis.std)
            for im in images
        ]
        return torch.stack(batch).to(self.device).contiguous(memory_format=self.memory_format)

    def load_volume(self, volume, *, spacing=None) -> Volume:
        """Read a volume: a NIfTI path, a DICOM series directory or ``.zip``, a 3-D numpy array
        (S x H x W, slice 0 first, each slice in display orientation) with ``spacing``
        (slice_mm, row_mm, col_mm), or a ``Volume`` (returned as is)."""
        if isinstance(volume, Volume):
            return volume
        return read_volume(volume, spacing=spacing)

    @torch.no_grad()
    def encode_volume(
        self, volume, *, spacing=None, batch_size: int = 32, progress=None
    ) -> EncodedVolume:
        """Run the image encoder once on every slice of a volume (``batch_size`` slices at a
        time); the cache is not touched. ``progress(done, total)`` is called after each batch.

        The model's CT window (``serving.window``) applies to Hounsfield-unit volumes; other
        volumes are scaled by one min-max over the whole volume.
        """
        if isinstance(volume, EncodedVolume):
            return volume
        vol = self.load_volume(volume, spacing=spacing)
        self.encoder_calls += 1
        with self._serialised():
            return encode_volume(
                self.model,
                vol,
                image_size=self.image_size,
                window=self.serving.window,
                batch_size=batch_size,
                device=self.device,
                memory_format=self.memory_format,
                ood=self.ood,
                progress=progress,
            )

    @torch.no_grad()
    def encode(self, image, **load_kwargs) -> EncodedImage | EncodedVolume:
        """Run the image encoder on one image or a list of them; the cache is not touched.

        Args:
            image: path, PIL image, numpy array or ``LoadedImage``, or a list of them; or a
                volume (a 3-D NIfTI, a DICOM series directory or ``.zip``, a 3-D array, a
                ``Volume``), which gives an ``EncodedVolume`` (see :meth:`encode_volume`).
            load_kwargs: passed to :meth:`load_image` (e.g. ``max_pixels``), or for a volume
                to :meth:`encode_volume` (``spacing``, ``batch_size``, ``progress``).

        Returns:
            An ``EncodedImage`` (one row per image) or ``EncodedVolume`` to pass to
            :meth:`segment`, :meth:`classify` or :meth:`image_embedding` any number of times.
        """
        if isinstance(image, (EncodedImage, EncodedVolume)):
            return image
        if is_volume(image, load_kwargs.get("spacing")):
            return self.encode_volume(image, **load_kwargs)
        many = isinstance(image, (list, tuple))
        loaded = [self.load_image(im, **load_kwargs) for im in (image if many else [image])]
        self.encoder_calls += 1
        x = self.preprocess(loaded)
        with self._serialised():
            encoded = encode(
                self.model,
                x,
                [im.size for im in loaded],
                [im.spacing for im in loaded],
                loaded,
                ood=self.ood,
            )
        return encoded

    def set_image(self, image, **kwargs) -> Segmenter:
        """Encode and cache one image (path, PIL image, numpy array, LoadedImage or an
        ``EncodedImage`` of one image) or one volume (3-D NIfTI, DICOM series directory or
        ``.zip``, 3-D array with ``spacing=(slice_mm, row_mm, col_mm)``, ``Volume``); later
        prompts only run the decoder. ``kwargs`` go to :meth:`encode`."""
        self._cache(self.encode(image, **kwargs))
        return self

    def _cache(self, encoded):
        if isinstance(encoded, EncodedImage) and len(encoded) != 1:
            raise ValueError(f"set_image takes one image, got {len(encoded)}")
        self._encoded = encoded
        return encoded

    @property
    def encoded(self) -> EncodedImage | EncodedVolume | None:
        """The cached image (from :meth:`set_image`), or None."""
        return self._encoded

    def out_of_domain(self, image=None) -> list[bool]:
        """Whether each image is unlike the model's training images (``serving.ood_threshold``
        on its out-of-domain score); all False when the model has no out-of-domain fit."""
        encoded, _ = self._resolve(image, cache=False)
        thr = self.serving.ood_threshold
        if isinstance(encoded, EncodedVolume):
            return [encoded.ood_score is not None and thr is not None and encoded.ood_score > thr]
        if encoded.ood_scores is None or thr is None:
            return [False] * len(encoded)
        return [score > thr for score in encoded.ood_scores]

    def reset_image(self) -> None:
        self._encoded = None

    @property
    def has_image(self) -> bool:
        return self._encoded is not None

    def _resolve(self, image, *, cache: bool = True, spacing=None):
        """(EncodedImage or EncodedVolume, whether several images were given) for ``image``:
        None is the cached image; one raw image or volume is encoded (and, with ``cache``,
        cached as by ``set_image``); a list is encoded without caching; an EncodedImage or
        EncodedVolume is used as it is."""
        if image is None:
            if self._encoded is None:
                raise RuntimeError("no image: pass image=... or call set_image(image) first")
            return self._encoded, False
        if isinstance(image, EncodedVolume):
            return image, False
        if isinstance(image, EncodedImage):
            return image, len(image) > 1
        if isinstance(image, (list, tuple)):
            return self.encode(image), True
        # this call's own encoding, even if another thread caches another image meanwhile
        if is_volume(image, spacing):
            encoded = self.encode_volume(image, spacing=spacing)
        else:
            encoded = self.encode(image)
        return (self._cache(encoded) if cache else encoded), False

    @torch.no_grad()
    def image_embedding(self, image=None) -> np.ndarray:
        """L2-normalised CLIP image embedding(s): E for one image or volume, N x E for a list;
        None uses the cached image (no encoder run)."""
        encoded, many = self._resolve(image)  # a volume: the normalised mean of its slices'
        return encoded.embedding if many else encoded.embedding[0]

    # -- text -------------------------------------------------------------------------------
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

    def classify(self, image=None, labels: Sequence[str] | None = None, templates=None):
        """Zero-shot classification: softmax over ``100 * image @ classes.T``.

        The image side is the model's zero-shot head where it has one (a head aligned to
        paraphrased captions, so that the answer holds across wordings of the labels; see
        docs/model.md), else the CLIP image embedding that retrieval also uses.

        Args:
            image: path/PIL/array, a list of them, an ``EncodedImage``, or None for the cached
                image.
            labels: class names (at least two), e.g. ``["melanoma", "nevus"]``; None: the
                checkpoint's default labels (``serving.labels``, with ``serving.templates``).
            templates: a template-set name (``dermoscopy``, ``ct``, ``generic``), a list of
                strings with ``{}``, or None for ``generic``.

        Returns:
            A ``ClassificationResult``, or a list of them for several images.
        """
        if labels is None:
            if not self.serving.labels:
                raise ValueError(
                    f"{self.name} records no default labels; pass labels=[...], e.g. "
                    "['melanoma', 'nevus']"
                )
            labels = self.serving.labels
            templates = templates if templates is not None else self.serving.templates
        if isinstance(labels, dict):
            raise TypeError(
                "labels must be a list of class names, not a dict; for a {code: name} mapping "
                "pass list(mapping.values()) (the answer's labels come back in that order)"
            )
        if isinstance(labels, str) or len(labels) < 2:
            raise ValueError(
                "give at least two labels to choose between, e.g. ['melanoma', 'nevus']"
            )
        labels = [str(lab).strip() for lab in labels]
        if not all(labels):
            raise ValueError("labels must be non-empty strings")
        seen: set[str] = set()
        repeated = [lab for lab in labels if lab.lower() in seen or seen.add(lab.lower())]
        if repeated:
            raise ValueError(
                f"labels repeat {repeated[0]!r}: give each class once (a repeated label splits "
                "its probability between its copies)"
            )
        classes = self.class_embeddings(labels, templates)
        encoded, many = self._resolve(image)
        out = zero_shot(encoded.zeroshot_embedding, classes, labels)
        return out if many else out[0]

    # -- segmentation -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, encoded: EncodedImage, texts: Sequence[str], image_index=None) -> Decoded:
        """Raw outputs for prompts on encoded images (no image-encoder run); see
        :func:`vlseg.inference.decode`. A prompt typed as a request in a form the model was
        not trained with is given to it as its description (``strip_requests``)."""
        texts, _ = _check_texts(list(texts))
        asked = [model_text(t, self.requests) for t in texts] if self.strip_requests else texts
        with self._serialised():
            out = decode(self.model, encoded, asked, image_index, text_cache=self.text_cache)
        out.texts = texts  # answers are named by the prompts as given
        return out

    def postprocess(
        self, decoded: Decoded, encoded: EncodedImage, *, spacing=None
    ) -> list[SegmentationResult]:
        """Answers at each image's own resolution, with this model's serving settings; see
        :func:`vlseg.inference.postprocess`."""
        return postprocess(
            decoded,
            encoded,
            self.serving,
            spacing=spacing,
            vocabulary=self.vocabulary,
        )

    @torch.no_grad()
    def segment(self, image=None, text: str | Sequence[str] = "", *, spacing=None):
        """Segment what ``text`` describes.

        Args:
            image: path, PIL image, HxW/HxWx3 numpy array; or a list of them (one result list
                per image); an ``EncodedImage`` (from :meth:`encode`; no encoder run); None to
                use the image or volume given to :meth:`set_image`. A volume (a 3-D NIfTI, a
                DICOM series directory or ``.zip``, an S x H x W array, a ``Volume`` or an
                ``EncodedVolume``) is answered in 3-D (:class:`VolumeResult`) and, given as
                a source, cached as by :meth:`set_image`.
            text: a description or a list of descriptions. One naming a single instance ("the
                largest hepatic lesion", "the lesion nearest the aorta") is resolved over the
                components of the target (:mod:`vlseg.referring`; ``referring = False`` turns
                that off); its ``note`` says when there were too few to choose from.
            spacing: pixel spacing (row_mm, col_mm) overriding the image's own, for mm^2; for
                a volume (slice_mm, row_mm, col_mm), e.g. for an array.

        Returns:
            A ``SegmentationResult`` (``VolumeResult`` for a volume) for one image and one
            text, a list for a list of texts, and a list of those for several images.
        """
        given, single_text = _check_texts(text)
        texts = [model_text(t, self.requests) for t in given] if self.strip_requests else given
        encoded, many = self._resolve(image, spacing=spacing)
        selectors = [parse_selector(t) if self.referring else None for t in texts]
        if isinstance(encoded, EncodedVolume):
            with self._serialised():
                out = [
                    self._segment_volume(encoded, t)
                    if sel is None
                    else self._referred_volume(encoded, sel)
                    for t, sel in zip(texts, selectors, strict=True)
                ]
            out = _as_given(out, given)
            return out[0] if single_text else out
        if any(selectors):
            per_image = self._referred_images(encoded, texts, selectors, spacing)
        else:
            n = len(encoded)
            rows = [i for i in range(n) for _ in texts]
            decoded = self.decode(encoded, texts * n, rows)
            res = self.postprocess(decoded, encoded, spacing=spacing)
            per_image = [res[i * len(texts) : (i + 1) * len(texts)] for i in range(n)]
        per_image = [_as_given(r, given) for r in per_image]
        out = [r[0] if single_text else r for r in per_image]
        return out if many else out[0]

    def _segment_volume(self, encoded: EncodedVolume, text: str) -> VolumeResult:
        return segment_volume(
            self.model,
            encoded,
            text,
            self.serving,
            text_cache=self.text_cache,
            vocabulary=self.vocabulary,
        )

    def _referred_volume(self, encoded: EncodedVolume, sel: Selector) -> VolumeResult:
        """One instance of ``sel.base`` in a volume, among the components the singular
        phrasing supports too (see :func:`vlseg.referring.resolve`); decoder runs only, and
        each prompt's outputs are kept on the volume, so asking again costs nothing."""
        base = self._segment_volume(encoded, sel.base)
        one = self._segment_volume(encoded, sel.singular) if sel.singular else None
        ref = None if sel.reference is None else self._segment_volume(encoded, sel.reference)
        organ = None if sel.within is None else self._segment_volume(encoded, sel.within)
        return resolve(base, sel, ref, within=organ, support=one, volume=encoded.volume)

    def _referred_images(
        self,
        encoded: EncodedImage,
        texts: list[str],
        selectors: list[Selector | None],
        spacing,
    ) -> list[list[SegmentationResult]]:
        """Answers on each image when some prompts name one instance: their base prompts (and
        references and organs) are decoded with the others in one batch, then resolved."""
        n, k = len(encoded), len(texts)
        plan = plan_referring(texts * n, [i for i in range(n) for _ in texts], selectors * n)
        decoded = self.decode(encoded, plan.texts, plan.rows)
        res = self.postprocess(decoded, encoded, spacing=spacing)
        spacings = [spacing or encoded.spacings[i] for i in range(n) for _ in texts]
        answers = plan.resolve(res, spacings)
        return [answers[i * k : (i + 1) * k] for i in range(n)]


def _as_given(results: list, texts: list[str]) -> list:
    """Results (one per text, in order) named by the texts as the caller gave them."""
    for r, t in zip(results, texts, strict=True):
        r.text = t
    return results


def is_volume(source, spacing=None) -> bool:
    """Whether ``source`` is a volume: a ``Volume``/``EncodedVolume``, a 3-D NIfTI, a DICOM
    series directory or ``.zip``, or a 3-D array that is not an H x W x C image (or any 3-D
    array given with a three-value ``spacing``)."""
    if isinstance(source, (Volume, EncodedVolume)):
        return True
    if isinstance(source, np.ndarray) and source.ndim == 3:
        return spacing is not None and len(spacing) == 3 or is_volume_source(source)
    if isinstance(source, (str, os.PathLike)):
        return is_volume_source(source)
    return False


def _is_medical(source) -> bool:
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = Path(source)
    return path.is_file() and (is_nifti(path) or is_dicom(path))


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
    threshold: float | None = None,
    allow_untrained: bool = False,
    text_dtype: str | torch.dtype | None = None,
) -> Segmenter:
    """Load a model by registered name, checkpoint directory, or None for the embedded default.

    The checkpoint's serving settings (threshold, calibration, CT window, default labels)
    come with it (``Segmenter.serving``).

    Args:
        name_or_path: registered name or checkpoint directory; None = the embedded default, or
            with ``adapter`` the base model the adapter was tuned on.
        adapter: a ``vlseg tune`` adapter directory (e.g. ``runs/tune/best``) to apply.
        threshold: overrides the checkpoint's presence/mask threshold.
        allow_untrained: load a registered variant that has no trained decoder weights (its
            segmentation head is random: for training or testing plumbing only).
        text_dtype: ``"bfloat16"`` keeps the text tower's weights in bf16: a new prompt reads
            half the bytes (ViT-B/16's CLIP text tower on an AMX Xeon: 39 -> 19 ms), answers
            within the tolerance in docs/benchmarks.md; None/``"float32"``: as trained.

    Raises:
        ValueError: unknown name (the message lists the available ones), an adapter tuned on
            another base model (both weight hashes named), or a variant without trained
            weights unless ``allow_untrained``.
    """
    from .checkpoint import resolve

    model, cfg, meta = resolve(name_or_path, adapter=adapter, allow_untrained=allow_untrained)
    name = cfg.name if adapter is None else f"{cfg.name}+{meta['adapter']['method']}"
    vocabulary = parse(meta.get("vocabulary"))  # None (unknown) when the checkpoint has none
    if vocabulary is not None and adapter is not None:
        vocabulary |= parse(meta["adapter"].get("vocabulary")) or frozenset()
    serving, ood = serving_of(meta), None
    if adapter is None:
        ood = OODDetector.load(meta["checkpoint_dir"]) if "checkpoint_dir" in meta else None
    else:
        # An adapter changes the features and scores that the base's calibration and
        # out-of-domain fit describe: serve it uncalibrated and unchecked.
        serving = dataclasses.replace(serving, calibration=None, ood_threshold=None)
    seg = Segmenter(
        model,
        image_size=cfg.image_size,
        serving=serving,
        threshold=threshold,
        device=device,
        name=name,
        vocabulary=vocabulary,
        ood=ood,
        text_dtype=text_dtype,
        requests=meta.get("requests"),
    )
    seg.source = {"model": _where(name_or_path), "adapter": _where(adapter)}
    return seg
