"""The chat turn: one message (text and/or an image) in, one friendly reply out.

:meth:`ChatService.respond` never raises for anything a user can send (bad files, huge images,
empty or very long messages, questions before an image): every failure becomes a reply that
says what went wrong and what to do. Nothing here imports gradio; ``app.py`` wires it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.predictor import Segmenter

from . import render
from .intents import Intent, parse_message
from .replies import (
    HELP_TEXT,
    NO_IMAGE_TEXT,
    SUPPORTED,
    clean_text,
    describe,
    file_name,
    file_path,
    join_notes,
    md_escape,
    readable_error,
    short_measure,
    unfamiliar_note,
    unique_labels,
)
from .session import (
    ChatSession,
    classify_cached,
    encode_image,
    search_similar,
    segment_cached,
    session_dir,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000  # longer messages are refused politely (the model reads ~77 tokens)
MAX_UPLOAD_PIXELS = 25_000_000  # decompression-bomb guard, checked from the file header
MAX_HISTORY_MESSAGES = 200  # older messages are dropped from the session's chat log


@dataclass
class TurnOutput:
    """What one turn shows besides the chat log.

    Attributes:
        reply: the assistant's markdown reply (also appended to ``session.history``).
        view_changed: whether the annotated view and mask files below replace the current ones
            (False: leave them as they are, e.g. after a classification).
        base: display-size H x W x 3 uint8 image for the annotated view, or None to clear it.
        annotations: (H x W bool mask, label) pairs at the size of ``base``.
        colors: label -> ``#rrggbb``.
        overlay: the rendered overlay (masks, outlines, legend) or None.
        overlay_path: ``overlay`` as a PNG file (shown in the chat), or None.
        files: mask PNG paths at the image's own resolution.
        attachments: more images for the chat message (e.g. similar cases' thumbnails).
    """

    reply: str
    view_changed: bool = False
    base: np.ndarray | None = None
    annotations: list[tuple[np.ndarray, str]] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)
    overlay: np.ndarray | None = None
    overlay_path: str | None = None
    files: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)


class ChatService:
    """Shared, read-only resources for all sessions, and the turn handler.

    Args:
        segmenter: the model; its own image cache is never used.
        index: a retrieval index with ``search_meta(vectors, k)``, or None.
        labels: default class labels for "what is this?" (default: the model's own,
            ``segmenter.serving.labels``).
        max_pixels: largest accepted image (pixels).
        workdir: where session files go (default: a new directory under the system temp dir,
            which gradio may serve files from).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        index: Any = None,
        *,
        labels: Sequence[str] | None = None,
        max_pixels: int = MAX_UPLOAD_PIXELS,
        workdir: str | os.PathLike[str] | None = None,
    ):
        if not isinstance(segmenter, Segmenter):
            raise TypeError(f"segmenter must be a vlseg Segmenter, got {type(segmenter).__name__}")
        if index is not None and not callable(getattr(index, "search_meta", None)):
            raise TypeError(f"index must have a search_meta(vectors, k) method, got {index!r}")
        self.segmenter = segmenter
        self.index = index
        self.labels = tuple(segmenter.serving.labels if labels is None else labels)
        self.max_pixels = int(max_pixels)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vlseg-chat-"))
        self._oneshot_dirs: deque[str] = deque()

    # -- the turn -------------------------------------------------------------------------
    def respond(
        self, session: ChatSession, text: str | None = "", files: Sequence[Any] = ()
    ) -> TurnOutput:
        """Handle one message; append it and the reply to ``session.history``.

        Args:
            session: this user's state (changed in place).
            text: the message.
            files: uploaded files (paths, or dicts with a ``path``); the first one is used.

        Returns:
            The reply and what to show; never raises for bad input.
        """
        session.turns += 1
        user_content: list[Any] = []
        text = clean_text(text)
        if text:
            user_content.append(text if len(text) <= 300 else text[:300] + "…")
        try:
            out = self._turn(session, text, list(files or []), user_content)
        except Exception as exc:  # the UI must get a reply, whatever failed
            log.exception("chat turn failed")
            out = TurnOutput(
                f"Sorry, something went wrong on my side ({type(exc).__name__}). Please try "
                "again; if it keeps happening, upload the image again or try another one."
            )
        self._log(session, user_content, out)
        return out

    def _turn(
        self, session: ChatSession, text: str, files: list[Any], user_content: list[Any]
    ) -> TurnOutput:
        notes: list[str] = []
        uploaded = bool(files)
        if uploaded:
            failed = self._upload(session, files, user_content, notes)
            if failed is not None:
                return failed
        view = self._plain_view(session) if uploaded else {}
        if len(text) > MAX_MESSAGE_CHARS:
            return TurnOutput(
                ("Got the image. " if uploaded else "")
                + f"Your message is {len(text):,} characters long; I read up to "
                f"{MAX_MESSAGE_CHARS:,}. Please send a short description of what to segment, "
                "e.g. *the hepatic lesion*.",
                **view,
            )
        intent = parse_message(text)
        if intent.spacing is not None:
            session.spacing = intent.spacing
            sp = intent.spacing
            notes.append(f"Using a pixel spacing of {sp[0]:g} × {sp[1]:g} mm.")
        if intent.note:
            notes.append(intent.note)
        if intent.kind == "help":
            return TurnOutput(join_notes(notes, HELP_TEXT), **view)
        if not session.has_image:
            return TurnOutput(join_notes(notes, NO_IMAGE_TEXT))
        if intent.kind == "classify":
            return self._classify(session, intent, notes, view)
        if intent.kind == "similar":
            return self._similar(session, intent, notes, view)
        if not intent.targets:
            return TurnOutput(join_notes(notes, self._ask_for_target(session, uploaded)), **view)
        return self._segment(session, intent.targets, notes)

    def _upload(
        self, session: ChatSession, files: list[Any], user_content: list[Any], notes: list[str]
    ) -> TurnOutput | None:
        """Encode the first file into the session; a reply when it is not a usable image."""
        path, name = file_path(files[0]), file_name(files[0])
        if len(files) > 1:
            notes.append(f"I can work on one image at a time, so I used {md_escape(name)}.")
        try:
            loaded = encode_image(
                self.segmenter, session, path, max_pixels=self.max_pixels, name=name
            )
        except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
            kept = (
                f" I kept the previous image ({md_escape(session.image_name)})."
                if session.has_image
                else ""
            )
            why = readable_error(exc, path, name)
            hint = "" if "Supported formats" in why else f" Supported formats: {SUPPORTED}."
            return TurnOutput(
                f"I could not use **{md_escape(name)}** as an image: {why}{hint}"
                f"\n\nPlease try another file.{kept}"
            )
        user_content.insert(0, self._thumbnail_file(session, loaded.display))
        return None

    def _ask_for_target(self, session: ChatSession, uploaded: bool) -> str:
        if not uploaded:
            return "What should I segment? For example *the hepatic lesion*. Type *help* for more."
        h, w = session.image.size
        sp = session.effective_spacing
        spacing = f"pixel spacing {sp[0]:g} × {sp[1]:g} mm" if sp else "pixel spacing unknown"
        return (
            f"Loaded **{md_escape(session.image_name)}** ({w} × {h} px, {spacing}). What should I "
            "segment? For example *the liver*, *the hepatic lesion* or *both kidneys*."
        )

    # -- intents --------------------------------------------------------------------------
    def _segment(self, session: ChatSession, targets: Sequence[str], notes: list[str]):
        results = segment_cached(self.segmenter, session, targets)
        # Keep masks and measurements, not the H x W float probabilities (4 bytes a pixel each).
        session.results = [
            dataclasses.replace(r, probs=np.empty((0, 0), np.float32)) for r in results
        ]
        labels = unique_labels([r.text for r in results])
        colors = render.colors_for(labels)
        legend = [f"{label}: {short_measure(r)}" for label, r in zip(labels, results, strict=True)]
        masks = [r.mask for r in results]
        overlay = render.render_overlay(session.image.display, masks, legend, list(colors.values()))
        base, small = render.to_display(session.image.display, masks)
        turn = self._turn_dir(session)
        files = [str(p) for p in render.write_mask_files(masks, labels, turn)]
        overlay_path = render.write_png(overlay, turn / "overlay.png")
        lines = [describe(r) for r in results]
        body = lines[0] if len(lines) == 1 else "\n".join(f"- {line}" for line in lines)
        found = any(r.area_px for r in results)
        if found and session.effective_spacing is None and not session.spacing_hint_given:
            session.spacing_hint_given = True
            body += (
                "\n\n_Areas are in pixels because the pixel spacing is unknown; add e.g. "
                "*spacing 0.8 mm* to a message to get mm²._"
            )
        caution = unfamiliar_note(results)
        if caution:
            body += "\n\n" + caution
        shown = [f"{label} ({short_measure(r)})" for label, r in zip(labels, results, strict=True)]
        return TurnOutput(
            join_notes(notes, body),
            view_changed=True,
            base=base,
            annotations=list(zip(small, shown, strict=True)),
            colors={a: colors[label] for a, label in zip(shown, labels, strict=True)},
            overlay=overlay,
            overlay_path=str(overlay_path),
            files=files,
        )

    def _classify(self, session: ChatSession, intent: Intent, notes: list[str], view: dict):
        labels = list(intent.targets) or list(self.labels)
        asked = list(intent.targets)
        if len(labels) == 1:  # "is it a melanoma?": weigh it against the default labels
            labels += [x for x in self.labels if x.lower() != labels[0].lower()]
        if len(labels) < 2:
            return TurnOutput(
                join_notes(
                    notes,
                    "This model has no default labels to choose between. Name at least two, "
                    "e.g. *is it a melanoma or a nevus?*",
                ),
                **view,
            )
        res = classify_cached(self.segmenter, session, labels)
        names, probs = res.labels, np.asarray(res.probs, dtype=np.float64)
        order = np.argsort(-probs)
        top = order[0]
        lines = [f"Most likely: **{md_escape(names[top])}** (probability {probs[top]:.2f})."]
        if len(asked) == 1:
            i = next((j for j, n in enumerate(names) if n.lower() == asked[0].lower()), None)
            if i is not None and i != top:
                lines.append(f"**{md_escape(names[i])}**: probability {probs[i]:.2f}.")
        others = ", ".join(f"{md_escape(names[j])} {probs[j]:.2f}" for j in order[1:6])
        if others:
            lines.append(f"Others: {others}.")
        lines.append(
            "_Probabilities are relative to the labels listed; zero-shot, not a diagnosis._"
        )
        if self.segmenter.out_of_domain(session.encoded)[0]:
            lines.insert(
                0,
                "**Caution:** this image is unlike what this model was trained on, so these "
                "probabilities are likely meaningless.",
            )
        return TurnOutput(join_notes(notes, "\n\n".join(lines)), **view)

    def _similar(self, session: ChatSession, intent: Intent, notes: list[str], view: dict):
        if self.index is None:
            return TurnOutput(
                join_notes(
                    notes,
                    "No case index is loaded, so I cannot search for similar cases. Start the "
                    "service with `--index PATH` to enable it.",
                ),
                **view,
            )
        try:
            hits = search_similar(self.index, session, intent.k)
        except Exception as exc:  # an index of another model, a corrupt file, ...
            log.exception("retrieval failed")
            why = md_escape(str(exc)[:300] or type(exc).__name__)
            return TurnOutput(
                join_notes(notes, f"The case index could not be searched: {why}"), **view
            )
        if not hits:
            return TurnOutput(join_notes(notes, "The case index returned no cases."), **view)
        lines = [f"The {len(hits)} most similar case(s) in the index:"]
        thumbs = []
        turn = self._turn_dir(session)
        for i, hit in enumerate(hits, start=1):
            caption = md_escape(str(hit.get("caption") or "(no caption)"))[:200]
            name = Path(str(hit.get("image", ""))).name if isinstance(hit.get("image"), str) else ""
            score = hit.get("score")
            score_txt = f" (similarity {float(score):.3f})" if score is not None else ""
            lines.append(f"{i}. {caption}{score_txt}" + (f" ({md_escape(name)})" if name else ""))
            if len(thumbs) < 4 and hit.get("image") is not None:
                thumbs.append(self._hit_thumbnail(hit["image"], turn / f"similar-{i:02d}.png"))
        attachments = [t for t in thumbs if t]
        return TurnOutput(join_notes(notes, "\n".join(lines)), attachments=attachments, **view)

    # -- files and views ------------------------------------------------------------------
    def _turn_dir(self, session: ChatSession) -> Path:
        d = session_dir(session, self.workdir) / f"turn-{session.turns:04d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _thumbnail_file(self, session: ChatSession, rgb: np.ndarray) -> dict[str, str]:
        # The converted image, not the upload: browsers cannot show DICOM or 16-bit TIFF.
        path = render.write_png(render.thumbnail(rgb), self._turn_dir(session) / "input.png")
        return {"path": str(path)}

    def _hit_thumbnail(self, image: Any, dest: Path) -> str | None:
        try:
            from vlseg.data.io import load_image

            return str(render.write_png(render.thumbnail(load_image(image).display, 160), dest))
        except Exception:  # a missing thumbnail must not cost the answer
            log.warning("could not render a thumbnail for %r", image, exc_info=True)
            return None

    def _plain_view(self, session: ChatSession) -> dict[str, Any]:
        base, _ = render.to_display(session.image.display)
        return {"view_changed": True, "base": base}

    def _log(self, session: ChatSession, user_content: list[Any], out: TurnOutput) -> None:
        if user_content:
            session.history.append({"role": "user", "content": user_content})
        reply: list[Any] = [out.reply]
        if out.overlay_path:
            reply.append({"path": out.overlay_path})
        reply += [{"path": p} for p in out.attachments]
        session.history.append({"role": "assistant", "content": reply})
        del session.history[:-MAX_HISTORY_MESSAGES]

    # -- stateless ------------------------------------------------------------------------
    def segment_once(self, image: Any, text: str) -> TurnOutput:
        """One image and one message, no conversation (the ``segment`` API endpoint).

        Files of the last 64 calls are kept (gradio copies them out before then).
        """
        session = ChatSession()
        try:
            return self.respond(session, text, [image] if image is not None else [])
        finally:
            session.encoded = None
            if session.directory:
                self._oneshot_dirs.append(session.directory)
            while len(self._oneshot_dirs) > 64:
                shutil.rmtree(self._oneshot_dirs.popleft(), ignore_errors=True)

    def close(self) -> None:
        """Delete every file this service wrote."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def load_index(index: Any) -> Any:
    """A retrieval index: an object with ``search_meta`` is returned as is, a path is loaded with
    ``retrieval.Index.load`` (needs faiss), None stays None. A directory written by ``vlseg
    index build`` (``images/`` and ``texts/``) gives its image index, which the chat searches."""
    if index is None or callable(getattr(index, "search_meta", None)):
        return index
    from retrieval import Index
    from retrieval.store import MARKER

    path = Path(index)
    if not (path / MARKER).is_file() and (path / "images" / MARKER).is_file():
        path = path / "images"
    return Index.load(path)
