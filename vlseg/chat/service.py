"""The chat turn: one message (text and/or an image) in, one friendly reply out.

:meth:`ChatService.respond` never raises for anything a user can send (bad files, huge images,
malformed DICOM series, 4-D NIfTI, empty or very long messages, questions before an image):
every failure becomes a reply that says what went wrong and what to do. Nothing here imports
gradio; ``app.py`` wires it.

Volumes. A 3-D NIfTI or a ``.zip`` of a DICOM series is read with
:func:`vlseg.data.volume_io.read_volume` and every slice is encoded once
(``Segmenter.encode_volume``, reporting ``progress(done, total)``); prompts then run the decoder
only and are answered in 3-D (:class:`vlseg.volume.VolumeResult`: volume in mL, diameters in mm,
separate regions, slices with findings). The session keeps the display slices and the last
answer's masks, so :meth:`ChatService.slice_view` draws any slice with its outlines, and each
turn writes the masks as NIfTI files aligned with the upload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.data.volume_io import is_volume_source, write_mask_nifti
from vlseg.predictor import Segmenter
from vlseg.volume import VolumeResult

from . import render
from .intents import Intent, answer_to_question, parse_message
from .replies import (
    GREETING_TEXT,
    GREETING_WITH_IMAGE_TEXT,
    HELP_TEXT,
    NO_IMAGE_TEXT,
    RESET_NO_IMAGE_TEXT,
    RESET_TEXT,
    SUPPORTED,
    THANKS_TEXT,
    UNKNOWN_TEXT,
    caution_text,
    clarify_text,
    clean_text,
    count_text,
    describe,
    describe_volume,
    file_name,
    file_path,
    in_unit,
    inside_text,
    join_notes,
    md_escape,
    readable_error,
    short_measure,
    short_measure_volume,
    slices_text,
    unique_labels,
)
from .session import (
    ChatSession,
    VolumeOverlay,
    classify_cached,
    encode_image,
    encode_volume,
    search_similar,
    segment_cached,
    session_dir,
)
from .worker import DEFAULT_WAIT_MS, ModelWorker

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000  # longer messages are refused politely (the model reads ~77 tokens)
MAX_UPLOAD_PIXELS = 25_000_000  # decompression-bomb guard, checked from the file header
MAX_UPLOAD_VOXELS = 128_000_000  # volumes (e.g. 512 x 512 x 488), checked from the headers
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
        keep_files: leave the mask files as they are (a new view of the same answer).
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
    keep_files: bool = False


class ChatService:
    """Shared, read-only resources for all sessions, and the turn handler.

    Args:
        segmenter: the model; its own image cache is never used.
        index: a retrieval index with ``search_meta(vectors, k)``, or None.
        labels: default class labels for "what is this?" (default: the model's own,
            ``segmenter.serving.labels``).
        max_pixels: largest accepted image (pixels).
        max_voxels: largest accepted volume (voxels).
        workdir: where session files go (default: a new directory under the system temp dir,
            which gradio may serve files from).
        batch_wait_ms: follow-ups on 2-D images go through one
            :class:`~vlseg.chat.worker.ModelWorker`, which runs concurrent sessions' decoder
            calls as one batch, waiting this long after a request for others to join it (the
            answers are the same up to float rounding); None: each session calls the model
            itself.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        index: Any = None,
        *,
        labels: Sequence[str] | None = None,
        max_pixels: int = MAX_UPLOAD_PIXELS,
        max_voxels: int = MAX_UPLOAD_VOXELS,
        workdir: str | os.PathLike[str] | None = None,
        batch_wait_ms: float | None = DEFAULT_WAIT_MS,
    ):
        if not isinstance(segmenter, Segmenter):
            raise TypeError(f"segmenter must be a vlseg Segmenter, got {type(segmenter).__name__}")
        if index is not None and not callable(getattr(index, "search_meta", None)):
            raise TypeError(f"index must have a search_meta(vectors, k) method, got {index!r}")
        self.segmenter = segmenter
        self.index = index
        self.labels = tuple(segmenter.serving.labels if labels is None else labels)
        self.max_pixels = int(max_pixels)
        self.max_voxels = int(max_voxels)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vlseg-chat-"))
        self._oneshot_dirs: deque[str] = deque()
        self.worker = (
            None if batch_wait_ms is None else ModelWorker(segmenter, wait_ms=batch_wait_ms)
        )

    # -- the turn -------------------------------------------------------------------------
    def respond(
        self,
        session: ChatSession,
        text: str | None = "",
        files: Sequence[Any] = (),
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> TurnOutput:
        """Handle one message; append it and the reply to ``session.history``.

        Args:
            session: this user's state (changed in place).
            text: the message.
            files: uploaded files (paths, or dicts with a ``path``); the first one is used.
            progress: for an uploaded volume, called as ``progress(done_slices, total)`` while
                its slices are encoded (0 first, then after each batch).

        Returns:
            The reply and what to show; never raises for bad input.
        """
        session.turns += 1
        user_content: list[Any] = []
        text = clean_text(text)
        if text:
            user_content.append(text if len(text) <= 300 else text[:300] + "…")
        try:
            out = self._turn(session, text, list(files or []), user_content, progress)
        except Exception as exc:  # the UI must get a reply, whatever failed
            log.exception("chat turn failed")
            out = TurnOutput(
                f"Sorry, something went wrong on my side ({type(exc).__name__}). Please try "
                "again; if it keeps happening, upload the image again or try another one."
            )
        self._log(session, user_content, out)
        return out

    def _turn(
        self,
        session: ChatSession,
        text: str,
        files: list[Any],
        user_content: list[Any],
        progress: Callable[[int, int], None] | None = None,
    ) -> TurnOutput:
        notes: list[str] = []
        uploaded = bool(files)
        if uploaded:
            failed = self._upload(session, files, user_content, notes, progress)
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
        intent = self._read(session, text)
        if intent.spacing is not None and session.is_volume:
            notes.append(self._volume_spacing_note(session))
        elif intent.spacing is not None:
            session.spacing = intent.spacing
            sp = intent.spacing
            notes.append(f"Using a pixel spacing of {sp[0]:g} × {sp[1]:g} mm.")
            # answers already given are measured again with it ("spacing 0.8 mm, how big is
            # it?" answers from the last result)
            session.results = [
                dataclasses.replace(r, area_mm2=r.area_px * sp[0] * sp[1])
                if not isinstance(r, VolumeResult)
                else r
                for r in session.results
            ]
        if intent.note and intent.kind != "unknown":  # an unknown intent's note is its reply
            notes.append(intent.note)
        if uploaded and session.is_volume:  # what was loaded (the upload-only reply says it)
            asks = intent.kind not in ("segment", "reset") or bool(intent.targets)
            notes.extend(self._volume_notes(session, facts=asks))
        if intent.kind in ("segment", "measure", "classify", "similar"):
            session.last_kind = intent.kind
        talk = self._talk(session, intent, uploaded, notes, view)
        if talk is not None:
            return talk
        if not session.has_image:
            return TurnOutput(join_notes(notes, NO_IMAGE_TEXT))
        if intent.kind == "classify":
            return self._classify(session, intent, notes, view)
        if intent.kind == "similar":
            return self._similar(session, intent, notes, view)
        if intent.kind == "measure":  # "how big is it?", "how many lesions?"
            return self._measure(session, intent, notes, view)
        if intent.kind == "slice":  # "go to slice 8", "next slice"
            return self._goto_slice(session, intent, notes, view)
        if not intent.targets:
            return TurnOutput(join_notes(notes, self._ask_for_target(session, uploaded)), **view)
        return self._segment(session, intent.targets, notes, inside=intent.inside)

    def _read(self, session: ChatSession, text: str) -> Intent:
        """The message's intent; an answer to the last "Did you mean ...?" picks a reading."""
        pending, session.pending = session.pending, ()
        if pending:
            choice = answer_to_question(text)
            if choice is not None and choice < len(pending):
                if choice < 0:  # "no"
                    return Intent("unknown", note="OK. What would you like me to do instead?")
                return pending[choice]
        return parse_message(
            text, previous=session.last_kind or None, vocabulary=self.segmenter.vocabulary
        )

    def _talk(
        self, session: ChatSession, intent: Intent, uploaded: bool, notes: list[str], view: dict
    ) -> TurnOutput | None:
        """The reply to a message that asks for no model call (help, greetings, thanks, start
        over, not understood, "Did you mean ...?"), or None."""
        kind = intent.kind
        if kind == "help":
            return TurnOutput(join_notes(notes, HELP_TEXT), **view)
        if kind == "greeting":
            if uploaded:
                return TurnOutput(
                    join_notes(notes, "Hello! " + self._ask_for_target(session, uploaded)), **view
                )
            text = GREETING_WITH_IMAGE_TEXT if session.has_image else GREETING_TEXT
            return TurnOutput(join_notes(notes, text), **view)
        if kind == "thanks":
            return TurnOutput(join_notes(notes, THANKS_TEXT), **view)
        if kind == "reset":
            if uploaded:  # "new image" sent with the new image: it is already loaded
                ask = self._ask_for_target(session, uploaded)
                return TurnOutput(join_notes(notes, ask), **view)
            had = session.has_image
            session.drop_image()
            session.spacing, session.spacing_hint_given = None, False
            out = TurnOutput(RESET_TEXT if had else RESET_NO_IMAGE_TEXT)
            if had:  # clear the annotated view and the mask files
                out.view_changed = True
            return out
        if kind == "unknown":
            # a note says why ("no" to "Did you mean ...?", "don't segment the liver")
            return TurnOutput(join_notes(notes, intent.note or UNKNOWN_TEXT), **view)
        if kind == "clarify":
            session.pending = intent.alternatives
            return TurnOutput(join_notes(notes, clarify_text(intent.alternatives)), **view)
        return None

    def _upload(
        self,
        session: ChatSession,
        files: list[Any],
        user_content: list[Any],
        notes: list[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> TurnOutput | None:
        """Encode the first file into the session; a reply when it is not a usable image."""
        path, name = file_path(files[0]), file_name(files[0])
        if len(files) > 1:
            notes.append(f"I can work on one image at a time, so I used {md_escape(name)}.")
        volume = _is_volume_upload(path)
        try:
            if volume:
                encode_volume(
                    self.segmenter,
                    session,
                    path,
                    max_voxels=self.max_voxels,
                    name=name,
                    progress=progress,
                )
            else:
                loaded = encode_image(
                    self.segmenter, session, path, max_pixels=self.max_pixels, name=name
                )
        except (ValueError, TypeError, FileNotFoundError, OSError, ImportError, MemoryError) as exc:
            kept = (
                f" I kept the previous image ({md_escape(session.image_name)})."
                if session.has_image
                else ""
            )
            if isinstance(exc, MemoryError):
                why = "it does not fit in this server's memory."
            else:
                why = _chat_wording(readable_error(exc, path, name))
                why = why if why.rstrip().endswith((".", "!", "?")) else why.rstrip() + "."
            hint = "" if "Supported formats" in why else f" Supported formats: {SUPPORTED}."
            what = "a volume" if volume else "an image"
            return TurnOutput(
                f"I could not use **{md_escape(name)}** as {what}: {why}{hint}"
                f"\n\nPlease try another file.{kept}"
            )
        if volume:
            display = session.volume_display
            thumb = self._thumbnail_file(session, render.gray_to_rgb(display[len(display) // 2]))
            user_content.insert(0, thumb)
        else:
            user_content.insert(0, self._thumbnail_file(session, loaded.display))
        return None

    def _ask_for_target(self, session: ChatSession, uploaded: bool) -> str:
        if not uploaded:
            return "What should I segment? For example *the hepatic lesion*. Type *help* for more."
        if session.is_volume:
            return (
                f"Loaded **{md_escape(session.image_name)}**: {self._volume_facts(session)}. What "
                "should I segment? For example *the liver*, *the hepatic lesion* or *both "
                f"kidneys*; I will measure it in 3-D. Slices are numbered 0–{session.n_slices - 1} "
                "in the file's order (the **Slice** slider)."
            )
        h, w = session.image.size
        sp = session.effective_spacing
        spacing = f"pixel spacing {sp[0]:g} × {sp[1]:g} mm" if sp else "pixel spacing unknown"
        return (
            f"Loaded **{md_escape(session.image_name)}** ({w} × {h} px, {spacing}). What should I "
            "segment? For example *the liver*, *the hepatic lesion* or *both kidneys*."
        )

    # -- volumes --------------------------------------------------------------------------
    @staticmethod
    def _volume_facts(session: ChatSession) -> str:
        """The volume in words: "a volume of 6 slices of 64 × 64 px (slices 2.5 mm apart, pixels
        0.8 × 0.8 mm)"."""
        vol = session.volume
        n, h, w = vol.values.shape
        sp = vol.spacing
        if sp is None:
            spacing = "voxel spacing unknown, so sizes will be in voxels and pixels"
        else:
            spacing = f"slices {sp[0]:.3g} mm apart, pixels {sp[1]:.3g} × {sp[2]:.3g} mm"
        facts = f"a volume of {n} slices of {w} × {h} px ({spacing})"
        if vol.resliced:
            facts += (
                f"; its {vol.resliced} images are shown as axial slices, the plane this model reads"
            )
        if vol.first_slice_end:
            facts += f"; slice 0 is the most {vol.first_slice_end}"
        return facts

    def _volume_notes(self, session: ChatSession, *, facts: bool = True) -> list[str]:
        """Remarks on a volume just loaded: what it is (with ``facts``), and its geometry's
        caveats."""
        vol = session.volume
        notes = []
        if facts:
            name = md_escape(session.image_name) + ": " if session.image_name else ""
            notes.append(f"_Loaded {name}{self._volume_facts(session)}._")
        gaps = vol.meta.get("slice_gaps_mm")
        if vol.meta.get("irregular_spacing") and isinstance(gaps, dict):
            notes.append(
                f"_Caution: the slice gaps vary from {gaps['min']:g} to {gaps['max']:g} mm "
                "(missing slices?), so volumes and lengths across slices are approximate._"
            )
        return notes

    @staticmethod
    def _volume_spacing_note(session: ChatSession) -> str:
        sp = session.volume.spacing
        if sp is None:
            return (
                "_A stated pixel spacing is not applied to a volume: its geometry comes from "
                "the file, which gives none here, so sizes are in voxels and pixels._"
            )
        return (
            "_A stated pixel spacing is not applied to a volume: I use the file's voxel "
            f"spacing ({sp[0]:.3g} × {sp[1]:.3g} × {sp[2]:.3g} mm, slice × row × column)._"
        )

    def slice_view(self, session: ChatSession, index: float | int | None = None) -> TurnOutput:
        """Slice ``index`` of the session's volume (default: the one shown) with the last
        answer's outlines, for the slice slider; it becomes the slice shown. For a 2-D image
        or no image: a TurnOutput that changes nothing."""
        fields = self._slice_fields(session, session.slice_index if index is None else index)
        return TurnOutput("", view_changed=True, **fields) if fields else TurnOutput("")

    def _slice_fields(self, session: ChatSession, index: float | int) -> dict[str, Any]:
        """The view of slice ``index`` (clamped; it becomes the slice shown): ``base`` and the
        overlay's ``annotations`` and ``colors``; {} without a volume."""
        # one snapshot: the slider may draw while a turn replaces the volume or the answer
        display, overlay = session.volume_display, session.overlay
        if display is None:
            return {}
        k = int(min(max(round(float(index)), 0), len(display) - 1))
        session.slice_index = k
        rgb = render.gray_to_rgb(display[k])
        if overlay is None or not overlay.masks or overlay.masks[0].shape != display.shape:
            base, _ = render.to_display(rgb)
            return {"base": base}
        base, small = render.to_display(rgb, [m[k] for m in overlay.masks])
        return {
            "base": base,
            "annotations": list(zip(small, overlay.labels, strict=True)),
            "colors": dict(zip(overlay.labels, overlay.colors, strict=True)),
        }

    @staticmethod
    def _focus_slice(results: list[VolumeResult], masks: list[np.ndarray], current: int) -> int:
        """The slice to show: where the first finding's longest diameter lies, else the slice
        with the most of a tentative outline, else the one already shown."""
        for r in results:
            if r.present and r.diameter_slices:
                return int(r.diameter_slices[0])
        for m in masks:
            per_slice = m.sum(axis=(1, 2))
            if per_slice.any():
                return int(np.argmax(per_slice))
        return current

    def _segment_volume(self, session: ChatSession, targets: Sequence[str], notes: list[str]):
        vol = session.volume
        results = segment_cached(self.segmenter, session, targets, self.worker)
        # Keep masks and measurements, not the float probabilities (4 bytes a voxel each).
        session.results = [
            dataclasses.replace(r, probs=np.empty((0,), np.float32)) for r in results
        ]
        labels = unique_labels([r.text for r in results])
        colors = render.colors_for(labels)
        masks = [vol.from_stored(r.mask) for r in results]  # S x H x W, like the display
        shown = [
            f"{label} ({short_measure_volume(r)})" for label, r in zip(labels, results, strict=True)
        ]
        session.overlay = VolumeOverlay(masks, shown, [colors[label] for label in labels])
        k = self._focus_slice(results, masks, session.slice_index)
        fields = self._slice_fields(session, k)
        legend = [
            f"{label}: {short_measure_volume(r)}" for label, r in zip(labels, results, strict=True)
        ]
        rgb = render.gray_to_rgb(session.volume_display[k])
        overlay = render.render_overlay(rgb, [m[k] for m in masks], legend, list(colors.values()))
        turn = self._turn_dir(session)
        files = [
            str(write_mask_nifti(turn / f"{render.slug(label)}_mask.nii.gz", r.mask, vol))
            for label, r in zip(labels, results, strict=True)
        ]
        overlay_path = render.write_png(overlay, turn / f"overlay-slice-{k:04d}.png")
        lines = [describe_volume(r) for r in results]
        body = lines[0] if len(lines) == 1 else "\n".join(f"- {line}" for line in lines)
        found = any(r.voxels for r in results)
        others = (
            "move the **Slice** slider to see the others"
            if session.slider
            else "the NIfTI mask holds every slice"
        )
        body += (
            f"\n\nShown: slice {k} (of 0–{len(vol) - 1}); {others}. The mask downloads as "
            "NIfTI, aligned with your file."
            if found
            else f"\n\nShown: slice {k} (of 0–{len(vol) - 1})."
        )
        if found and vol.spacing is None and not session.spacing_hint_given:
            session.spacing_hint_given = True
            body += "\n\n_Sizes are in voxels and pixels because the file gives no voxel spacing._"
        caution = caution_text(results)
        if caution:
            body += "\n\n" + caution
        return TurnOutput(
            join_notes(notes, body),
            view_changed=True,
            **fields,
            overlay=overlay,
            overlay_path=str(overlay_path),
            files=files,
        )

    def _measure(self, session: ChatSession, intent: Intent, notes: list[str], view: dict):
        """A size or count question: from the last answer when it covers the targets (no model
        run), else by segmenting the targets (never the question's words)."""
        volume = session.is_volume
        last = [r for r in session.results if isinstance(r, VolumeResult) == volume]
        targets = intent.targets or tuple(r.text for r in last)
        if not targets:
            return TurnOutput(
                join_notes(
                    notes,
                    "Which structure should I measure? For example *how big is the hepatic "
                    "lesion?* or *how many hepatic lesions are there?*",
                ),
                **view,
            )
        if intent.measure == "volume" and not volume:
            notes.append(
                "_This is a 2-D image, so I give the area; for a volume in mL, upload the scan as "
                "a 3-D NIfTI or a .zip of its DICOM series._"
            )
        if intent.measure == "slices" and not volume:
            notes.append("_This is a single 2-D image: it has no slices to count._")
        if intent.unit == "ml" and not volume:
            notes.append("_An area has no volume in mL; here it is in the units I can give._")
        known = {r.text.lower(): r for r in last}
        if any(t.lower() not in known for t in targets):
            out = self._segment(session, targets, notes)
            answers = session.results
        else:
            answers = [known[t.lower()] for t in targets]
            if intent.measure == "slices" and volume:
                lines = [slices_text(r) for r in answers]
            elif intent.measure == "count" and not volume:
                lines = [count_text(r) for r in answers]
            else:
                lines = [(describe_volume if volume else describe)(r) for r in answers]
            body = lines[0] if len(lines) == 1 else "\n".join(f"- {line}" for line in lines)
            out = TurnOutput(join_notes(notes, body), **view)
        converted = [c for c in (in_unit(r, intent.unit) for r in answers) if c]
        if converted:
            out.reply += "\n\n" + "\n".join(converted)
        elif intent.unit in ("mm", "cm") and any(r.present for r in answers):
            out.reply += (
                f"\n\n_I can give sizes in {intent.unit} only when the pixel spacing is known; "
                "add e.g. *spacing 0.8 mm* to the question._"
            )
        return out

    def _goto_slice(self, session: ChatSession, intent: Intent, notes: list[str], view: dict):
        """Show the slice a ``slice`` intent names (an index, -1 for the last, or a step from
        the slice shown, clamped) with the last answer's outlines (the slider follows)."""
        if not session.is_volume:
            body = (
                "This is a single 2-D image; slices apply to volumes (a 3-D NIfTI or a .zip "
                "of a DICOM series)."
            )
            return TurnOutput(join_notes(notes, body), **view)
        n = session.n_slices
        k = intent.k
        if intent.relative:
            k = min(max(session.slice_index + k, 0), n - 1)
        elif k == -1:
            k = n - 1
        if not 0 <= k < n:
            body = f"The volume has slices 0 to {n - 1}; slice {k} is not one of them."
            return TurnOutput(join_notes(notes, body), **view)
        fields = self._slice_fields(session, k)
        body = f"Slice {k} of 0–{n - 1} (the slider below the image moves through the others)."
        return TurnOutput(join_notes(notes, body), view_changed=True, keep_files=True, **fields)

    # -- intents --------------------------------------------------------------------------
    def _segment(
        self,
        session: ChatSession,
        targets: Sequence[str],
        notes: list[str],
        *,
        inside: bool = False,
    ):
        """Segment ``targets``; with ``inside`` (two targets), also say whether the first lies
        inside the second ("is this lesion in the liver?")."""
        out = self._segment_targets(session, targets, notes)
        if inside and len(session.results) == 2:
            answer = inside_text(*session.results)
            out.reply = f"{answer}\n\n{out.reply}"
        return out

    def _segment_targets(self, session: ChatSession, targets: Sequence[str], notes: list[str]):
        if session.is_volume:
            return self._segment_volume(session, targets, notes)
        results = segment_cached(self.segmenter, session, targets, self.worker)
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
        caution = caution_text(results)
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

    def _rivals(self, label: str) -> list[str]:
        """The labels one asked-about label is weighed against: the model's label set that
        holds it ("melanoma": the dermoscopy classes, not "normal liver"), else its defaults."""
        from prompts import load_labels

        for entry in (self.segmenter.serving.label_sets or {}).values():
            table = entry.get("labels")
            try:
                codes = list(load_labels(table)) if isinstance(table, str) else list(table or ())
            except (OSError, ValueError):
                continue
            if label.lower() in (c.lower() for c in codes):
                return codes
        return list(self.labels)

    def _classify(self, session: ChatSession, intent: Intent, notes: list[str], view: dict):
        labels = list(intent.targets) or list(self.labels)
        asked = list(intent.targets)
        if len(labels) == 1:  # "is it a melanoma?": weigh it against its own kind of labels
            labels += [x for x in self._rivals(labels[0]) if x.lower() != labels[0].lower()]
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
        i = None
        if len(asked) == 1:
            i = next((j for j, n in enumerate(names) if n.lower() == asked[0].lower()), None)
            if i is not None and i != top:
                lines.append(f"**{md_escape(names[i])}**: probability {probs[i]:.2f}.")
        shown = {top} | ({i} if len(asked) == 1 and i is not None else set())
        rest = [j for j in order if j not in shown][:5]
        others = ", ".join(f"{md_escape(names[j])} {probs[j]:.2f}" for j in rest)
        if others:
            lines.append(f"Others: {others}.")
        lines.append(
            "_Probabilities are relative to the labels listed; zero-shot, not a diagnosis._"
        )
        what = "volume" if session.is_volume else "image"
        if session.is_volume:
            lines.append(
                "_The volume is classified as a whole: the mean of its slices' embeddings._"
            )
        if self.segmenter.out_of_domain(session.encoded)[0]:
            lines.insert(
                0,
                f"**Caution:** this {what} is unlike what this model was trained on, so these "
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
        if session.is_volume:
            return {"view_changed": True, **self._slice_fields(session, session.slice_index)}
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
        session = ChatSession(slider=False)  # this panel shows one picture: no slider
        try:
            return self.respond(session, text, [image] if image is not None else [])
        finally:
            session.drop_image()
            if session.directory:
                self._oneshot_dirs.append(session.directory)
            while len(self._oneshot_dirs) > 64:
                shutil.rmtree(self._oneshot_dirs.popleft(), ignore_errors=True)

    def close(self) -> None:
        """Stop the model worker and delete every file this service wrote."""
        if self.worker is not None:
            self.worker.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _is_volume_upload(path: Any) -> bool:
    """Whether an upload goes the volume way: a ``.zip``, a folder, a NIfTI of several slices
    (header only). Anything that fails here is left to the 2-D loader's own message."""
    try:
        return path is not None and is_volume_source(path)
    except Exception:
        log.debug("is_volume_source failed on %r", path, exc_info=True)
        return False


_API_HINTS = (
    # the readers' advice names library calls; in the chat, say what to upload instead
    # (messages arrive markdown-escaped: "load\_image")
    (re.compile(r";? ?use load\\?_image \(or model\.segment\) for one slice"), ". To segment "
     "one slice, upload that .dcm file by itself"),
    (re.compile(r"; for a 2-D image use vlseg\.data\.io\.load\\?_image \(or model\.segment on "
                r"the image\)"), ""),
)  # fmt: skip


def _chat_wording(message: str) -> str:
    for pattern, repl in _API_HINTS:
        message = pattern.sub(repl, message)
    return message


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
