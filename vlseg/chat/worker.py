"""One model worker for many chat sessions: their decoder calls, batched.

A chat server answers many sessions with one model. Each follow-up needs only the text tower
(usually a text-cache hit) and the decoder on the session's cached image features, a few
milliseconds of model work wrapped in a fixed per-call cost. :class:`ModelWorker` owns those
calls: a session submits (encoded image, prompts, spacing) and waits on a future; the worker
thread takes every request that arrived while it was busy (or within ``wait_ms`` of the
first), puts their images side by side (:func:`concat_encoded`) and runs ONE
``Segmenter.decode`` over all their prompts, each prompt on its own image through
``image_index``. It then answers each request with ``Segmenter.postprocess`` on its own image
(its resolution, spacing and out-of-domain score), so an answer equals
``Segmenter.segment``'s on that image up to float rounding. A request that finds no company is
answered by ``Segmenter.segment`` itself.

The decoder calls of concurrent follow-ups thus run in this one thread, one after another,
instead of several torch calls competing for the same cores.

Requests the batched path does not cover are answered by ``Segmenter.segment`` in the caller's
thread, exactly as before: volumes (a volume's prompt runs the decoder on every slice; it
must not hold up other sessions' follow-ups), several images at once, empty prompts, prompts
that name one instance ("the largest lesion": :mod:`vlseg.referring`), and models with a
prompt learner (their text features depend on the image).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from vlseg.inference import Decoded, EncodedImage, SegmentationResult
from vlseg.predictor import Segmenter

log = logging.getLogger(__name__)

DEFAULT_WAIT_MS = 2.0  # after the first request, wait this long for others (the rest queue up
# while a batch runs anyway)
DEFAULT_MAX_PROMPTS = 64  # prompts in one decoder call


def concat_encoded(parts: Sequence[EncodedImage]) -> EncodedImage:
    """Several encoded images as one ``EncodedImage`` (rows in order; no encoder run).

    The images must come from the same model at the same input size (equal feature shapes).
    Per-scale decoder inputs prepared at encoding (``features.prepared``) are kept when every
    part has them, else dropped (the decoder then prepares them itself).

    Raises:
        ValueError: no parts, or feature shapes that differ.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("no encoded images to concatenate")
    if len(parts) == 1:
        return parts[0]
    feats = [p.features for p in parts]
    shapes = {tuple(tuple(m.shape[1:]) for m in f.maps) for f in feats}
    if len(shapes) != 1:
        raise ValueError(f"encoded images of different feature shapes: {sorted(shapes)}")
    features = type(feats[0]).concat(feats)
    images = None if any(p.images is None for p in parts) else [i for p in parts for i in p.images]
    ood = (
        None
        if any(p.ood_scores is None for p in parts)
        else [s for p in parts for s in p.ood_scores]
    )
    return EncodedImage(
        features,
        [s for p in parts for s in p.sizes],
        [s for p in parts for s in p.spacings],
        images,
        ood,
    )


@dataclass
class _Request:
    encoded: Any
    texts: list[str]
    spacing: tuple[float, float] | None
    future: Future = field(default_factory=Future)


class ModelWorker:
    """A thread that answers ``segment`` requests from many sessions, batching their decoder
    calls (see the module docstring).

    Args:
        segmenter: the shared model.
        wait_ms: after taking a request, how long to wait for more before running the batch
            (requests that arrive while a batch runs are taken without waiting).
        max_prompts: the most prompts in one decoder call.
        name: the thread's name.

    The thread starts on the first request; :meth:`close` stops it (requests still queued are
    answered first).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        wait_ms: float = DEFAULT_WAIT_MS,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
        name: str = "vlseg-model-worker",
    ):
        if not isinstance(segmenter, Segmenter):
            raise TypeError(f"segmenter must be a vlseg Segmenter, got {type(segmenter).__name__}")
        self.segmenter = segmenter
        self.wait_s = max(0.0, float(wait_ms)) / 1e3
        self.max_prompts = max(1, int(max_prompts))
        self.name = name
        self.batches = 0  # decoder calls run (for tests and benchmarks)
        self.requests = 0  # requests answered
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the sessions' side ---------------------------------------------------------------
    def segment(
        self, encoded: Any, texts: Sequence[str], *, spacing: tuple[float, float] | None = None
    ) -> list[SegmentationResult]:
        """``Segmenter.segment(encoded, list(texts), spacing=spacing)``, answered by the worker.

        Returns:
            One result per text (``VolumeResult`` for an ``EncodedVolume``), like ``segment``
            with a list of texts.

        Raises:
            Whatever ``segment`` raises for this request; RuntimeError after :meth:`close`.
        """
        texts = [str(t) for t in texts]
        if not self._batchable(encoded, texts):
            return self.segmenter.segment(encoded, texts, spacing=spacing)
        request = _Request(encoded, texts, spacing)
        self._submit(request)
        return request.future.result()

    def _batchable(self, encoded: Any, texts: list[str]) -> bool:
        seg = self.segmenter
        if not isinstance(encoded, EncodedImage) or len(encoded) != 1 or not texts:
            return False
        if getattr(seg.model, "prompter", None) is not None:
            return False
        if any(not t.strip() for t in texts):  # segment's own message for an empty prompt
            return False
        if seg.referring:
            from vlseg.referring import parse_selector

            if any(parse_selector(t) is not None for t in texts):
                return False
        return True

    def _submit(self, request: _Request) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the model worker is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(request)

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # -- the worker's side ----------------------------------------------------------------
    def _loop(self) -> None:
        pending: _Request | None = None
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is None:
                return
            batch, stop = [first], False
            prompts = len(first.texts)
            deadline = time.perf_counter() + self.wait_s
            while prompts < self.max_prompts:
                try:
                    left = deadline - time.perf_counter()
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if prompts + len(nxt.texts) > self.max_prompts:
                    pending = nxt  # first in the next batch
                    break
                batch.append(nxt)
                prompts += len(nxt.texts)
            self._run_batch(batch)
            if stop:
                while pending is not None or not self._queue.empty():
                    rest = pending if pending is not None else self._queue.get_nowait()
                    pending = None
                    if rest is not None:
                        self._run_batch([rest])
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        plain = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if len(plain) == 1:  # alone: the library's own call, the unbatched answer exactly
            self._answer_alone(plain[0])
            return
        if not plain:
            return
        try:
            with torch.no_grad():
                answers = self._decode_together(plain)
        except Exception:  # one bad request must not fail the others: answer each alone
            log.warning("batched decode failed; answering its requests one by one", exc_info=True)
            for r in plain:
                self._answer_alone(r)
            return
        for r, answer in zip(plain, answers, strict=True):
            r.future.set_result(answer)
            self.requests += 1

    def _decode_together(self, requests: list[_Request]) -> list[list[SegmentationResult]]:
        seg = self.segmenter
        # one row per distinct image (a request's texts all go to its own image)
        rows: dict[int, int] = {}
        parts: list[EncodedImage] = []
        for r in requests:
            if id(r.encoded) not in rows:
                rows[id(r.encoded)] = len(parts)
                parts.append(r.encoded)
        texts = [t for r in requests for t in r.texts]
        index = [rows[id(r.encoded)] for r in requests for _ in r.texts]
        decoded = seg.decode(concat_encoded(parts), texts, index)
        self.batches += 1
        out, start = [], 0
        for r in requests:
            stop = start + len(r.texts)
            own = Decoded(
                decoded.logits[start:stop],
                decoded.presence[start:stop],
                [0] * len(r.texts),
                list(r.texts),
            )
            out.append(seg.postprocess(own, r.encoded, spacing=r.spacing))
            start = stop
        return out

    def _answer_alone(self, r: _Request) -> None:
        try:
            with torch.no_grad():
                answer = self.segmenter.segment(r.encoded, r.texts, spacing=r.spacing)
        except BaseException as exc:  # the session's thread re-raises it
            r.future.set_exception(exc)
        else:
            r.future.set_result(answer)
        self.requests += 1
