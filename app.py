"""Gradio wiring for the chat service; all logic is in :mod:`vlseg.chat`.

Run ``python app.py``, ``make run`` or ``vlseg serve``. This module is the only place that imports
gradio: the library (``vlseg``) stays UI-free. API endpoints for
``gradio_client``:

- ``/chat``: one chat turn, ``message={"text": str, "files": [handle_file(path)]}``; returns the
  chat log, the cleared message box, the annotated view and the mask files. The conversation
  (image cache included) is kept per client session. The log holds every message, but only
  this turn's files come as files: an earlier turn's image comes as a reference (``path``
  None, ``url`` to fetch it; it was a file in its own turn's reply), and so does the view's
  image when this session was sent it before, so a turn costs the same at message 2 or 200. A
  volume (a 3-D NIfTI or a ``.zip`` of a DICOM series) is answered in 3-D: the reply measures
  it, the view shows the slice with the largest finding, and the mask files are NIfTI, aligned
  with the upload.
- ``/segment``: stateless, ``image=handle_file(path), text=str``; returns the reply (markdown),
  the overlay image and the mask PNGs.
- ``/reset``: forget the session's image and chat log.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from gradio.route_utils import API_PREFIX
from gradio.utils import get_upload_folder
from gradio_client.utils import encode_file_path
from PIL import Image

from vlseg.chat import RESEARCH_NOTICE, ChatService, ChatSession, TurnOutput, load_index
from vlseg.chat.intents import warm_up as warm_up_intents
from vlseg.chat.render import PNG_COMPRESS_LEVEL
from vlseg.indexing import check_index_model
from vlseg.predictor import Segmenter, load

log = logging.getLogger(__name__)

CONCURRENCY_LIMIT = 2  # events at once by default (gradio's queue); more wait their turn
# Chat turns at once (and /segment calls, which share the limit): their decoder calls go to one
# model worker that batches them, so more turns in flight cost no extra model threads.
TURN_CONCURRENCY = 8
MALLOC_ARENAS = 2  # see serve()
MALLOC_TRIM_EVERY_S = 30.0
QUEUE_SIZE = 64
SESSION_TTL_S = 4 * 3600
MAX_FILE_SIZE = "300mb"  # a CT volume (.nii.gz or a .zip of its DICOM series) can be large
# (seed, index, modality, prompt): one click each for segmentation, several targets with mm^2
# (the phantom's true spacing is appended to the prompt), and classification.
EXAMPLE_SPECS = (
    (7, 0, "ct", "segment the hepatic lesion"),
    (7, 1, "ct", "the liver, the spleen and both kidneys, spacing {spacing:.2f} mm"),
    (7, 0, "dermoscopy", "is it a melanoma or a nevus?"),
)


def make_examples(directory: str | os.PathLike[str], size: int = 256) -> list[tuple[str, str]]:
    """Render the example phantoms as PNGs into ``directory``.

    Returns:
        (image path, prompt) pairs.
    """
    from vlseg.data.phantoms import generate_sample

    out = []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for seed, index, modality, prompt in EXAMPLE_SPECS:
        s = generate_sample(seed=seed, index=index, modality=modality, size=size)
        path = directory / f"{s.id}.png"
        Image.fromarray(s.image).save(path)
        out.append((str(path), prompt.format(spacing=s.spacing[0])))
    return out


class ChatLog(gr.Chatbot):
    """``gr.Chatbot`` that sends only this turn's files as files.

    Its value may be a :class:`LogUpdate`: the whole chat log and where this turn's messages
    start. Files of earlier messages that lie in gradio's cache were sent with their own turn;
    they go out again as their URL alone (no server path, no gradio file marker), so gradio
    neither hashes nor copies them again and ``gradio_client`` does not download them again: a
    turn's cost no longer grows with the conversation. The browser shows them from their URL as
    before. Files elsewhere, and every file of this turn's messages, are sent as usual.
    """

    is_template = True  # the browser draws it as a gr.Chatbot

    def postprocess(self, value):  # type: ignore[override]
        if not isinstance(value, LogUpdate):
            return super().postprocess(value)
        old = super().postprocess(list(value[: value.new_from])).model_dump()
        new = super().postprocess(list(value[value.new_from :])).model_dump()
        for message in old:
            for item in message.get("content") or []:
                file = item.get("file") if isinstance(item, dict) else None
                if isinstance(file, dict) and _in_gradio_cache(file.get("path")):
                    item["file"] = _sent_file(file)
        return old + new


class LogUpdate(list):
    """The chat log (a list of messages) for :class:`ChatLog`; ``self[new_from:]`` are this
    turn's messages."""

    def __init__(self, messages: list[dict[str, Any]], new_from: int):
        super().__init__(messages)
        self.new_from = max(0, min(int(new_from), len(messages)))


@functools.lru_cache(maxsize=8)
def _resolved(folder: str) -> str:
    return os.path.realpath(folder)


def _cache_root() -> str:
    """Gradio's cache folder (``GRADIO_TEMP_DIR``), symbolic links resolved."""
    return _resolved(get_upload_folder())


def _in_gradio_cache(path: Any) -> bool:
    """Whether ``path`` (as written by this app: absolute, links resolved) is inside gradio's
    cache; other spellings of such a path count as outside (gradio then handles the file)."""
    return isinstance(path, str) and os.path.abspath(path).startswith(_cache_root() + os.sep)


class ViewImage(gr.AnnotatedImage):
    """``gr.AnnotatedImage`` whose value may be ready to send (:func:`view_value`): then
    nothing is drawn here, on gradio's event loop, where the postprocessing of an update runs.
    A plain ``(image, annotations)`` value is drawn by :func:`view_value` too."""

    is_template = True  # the browser draws it as a gr.AnnotatedImage

    def postprocess(self, value):  # type: ignore[override]
        if isinstance(value, dict) and "image" in value:  # from view_value: ready
            return value
        if value is None or not isinstance(value[0], np.ndarray) or self.format != "png":
            return super().postprocess(value)
        if not all(isinstance(m, np.ndarray) for m, _ in value[1]):  # boxes: gradio draws them
            return super().postprocess(value)
        return view_value(value[0], value[1], self.color_map or {})


def view_value(
    base: np.ndarray,
    annotations: list[tuple[np.ndarray, str]],
    colors: dict[str, str],
    sent: set[str] | None = None,
) -> dict[str, Any]:
    """The annotated view as ``gr.AnnotatedImage`` sends it, drawn the same way (each mask
    layer in its label's colour, opacity from the mask) but with fast PNG compression, each
    file written once under a name from its content inside gradio's cache (so gradio serves it
    without copying it).

    Args:
        sent: paths already sent to this client (updated): the base image goes as a reference
            when it is one of them (a follow-up on the same image), so it is not hashed,
            copied or downloaded again.
    """
    h, w = base.shape[:2]
    layers = []
    for mask, label in annotations:
        alpha = np.asarray(mask, dtype=np.float32)
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[alpha > 0, :3] = _rgb(colors.get(label, "#ff0000"))
        rgba[..., 3] = (alpha * 255).astype(np.uint8)
        layers.append({"image": FileData(path=_cached_png(rgba)).model_dump(), "label": label})
    path = _cached_png(base)
    if sent is not None and path in sent:
        image = _sent_file({"path": path, "mime_type": "image/png"})
    else:
        image = FileData(path=path, mime_type="image/png").model_dump()
        if sent is not None:
            sent.add(path)
    return {"image": image, "annotations": layers}


def _sent_file(file: dict[str, Any]) -> dict[str, Any]:
    """A file the client already has, as a reference: its URL, no server path and no gradio
    file marker (gradio does not cache it again, ``gradio_client`` does not download it)."""
    path = file["path"]
    return {
        **file,
        "path": None,
        "url": f"{API_PREFIX}/file={encode_file_path(path)}",
        "orig_name": file.get("orig_name") or Path(path).name,
        "meta": {},
    }


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _cached_png(pixels: np.ndarray) -> str:
    """``pixels`` as a PNG in gradio's cache, named by its content (written once)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    path = Path(_cache_root()) / digest / "image.png"
    if path.exists():  # gradio's delete_cache ages files by ctime: this one is in use again
        with contextlib.suppress(OSError):
            os.utime(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".image-{threading.get_ident()}.png")
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        os.replace(tmp, path)
    return str(path)


def _view(out: TurnOutput, session: ChatSession | None = None):
    if not out.view_changed:
        return gr.skip(), gr.skip()
    view = None
    if out.base is not None:
        sent = session.sent_files if isinstance(session, ChatSession) else None
        value = view_value(out.base, out.annotations, out.colors, sent)
        view = ViewImage(value=value, color_map=out.colors, format="png")
    return view, (gr.skip() if out.keep_files else (out.files or None))


def slice_slider(session: ChatSession | None):
    """The slice slider for the session: shown at the slice on view for a volume, hidden for a
    2-D image or none."""
    n = session.n_slices if isinstance(session, ChatSession) else 0
    if n < 2:
        return gr.Slider(visible=False)
    return gr.Slider(minimum=0, maximum=n - 1, step=1, value=session.slice_index, visible=True)


def progress_reporter(progress: Any):
    """A ``progress(done, total)`` callback for volume encoding that drives ``gr.Progress``."""

    def report(done: int, total: int) -> None:
        progress((done, total), desc="Encoding the volume's slices", unit="slices")

    return report


def build_demo(
    segmenter: Segmenter,
    index: Any = None,
    *,
    examples_dir: str | os.PathLike[str] | None = None,
    concurrency: int = TURN_CONCURRENCY,
) -> gr.Blocks:
    """The chat UI and its API endpoints (``/chat``, ``/segment``, ``/reset``).

    Args:
        segmenter: the shared model (read-only here; each session caches its own image).
        index: a retrieval index with ``search_meta(vectors, k)`` for "find similar cases".
        examples_dir: where to render the example phantoms (default: a new temp directory).
        concurrency: chat turns and ``/segment`` calls handled at once; the others queue.
    """
    # Session files (overlays, masks, thumbnails) are written inside gradio's cache folder, where
    # gradio serves them from without hashing and copying each one.
    Path(get_upload_folder()).mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="vlseg-chat-", dir=_cache_root())
    service = ChatService(segmenter, index, workdir=workdir)
    # load the sentence model that reads messages now, not on the first message
    threading.Thread(target=warm_up_intents, name="vlseg-intents", daemon=True).start()
    examples = make_examples(examples_dir or tempfile.mkdtemp(prefix="vlseg-examples-"))

    def chat(message: dict | None, session: ChatSession | None, progress=gr.Progress()):
        session = session if isinstance(session, ChatSession) else ChatSession()
        message = message if isinstance(message, dict) else {"text": str(message or "")}
        if not (message.get("text") or "").strip() and not message.get("files"):
            if session.has_image:  # an empty Enter asks nothing: no turn (no reply to nothing)
                return gr.skip(), None, gr.skip(), gr.skip(), session
        sent = {id(m) for m in session.history}
        out = service.respond(
            session,
            message.get("text") or "",
            message.get("files") or [],
            progress=progress_reporter(progress),
        )
        view, files = _view(out, session)
        new_from = next(
            (i for i, m in enumerate(session.history) if id(m) not in sent), len(session.history)
        )
        return LogUpdate(list(session.history), new_from), None, view, files, session

    def show_slice(index: float | None, session: ChatSession | None):
        if not isinstance(session, ChatSession) or index is None:
            return gr.skip()
        view, _ = _view(service.slice_view(session, index), session)
        return view

    def reset(session: ChatSession | None):
        if isinstance(session, ChatSession):
            session.close()
        return [], None, None, ChatSession()

    def segment(image: str | None, text: str | None):
        out = service.segment_once(image, text or "")
        return out.reply, out.overlay, (out.files or None)

    # cached files live as long as a session may still show them
    with gr.Blocks(
        title="vlseg chat", analytics_enabled=False, delete_cache=(3600, SESSION_TTL_S)
    ) as demo:
        gr.Markdown(
            f"## vlseg: describe what to segment in a medical image\n\n⚠️ **{RESEARCH_NOTICE}**",
            elem_id="notice",
        )
        session = gr.State(  # None until the first turn creates this user's ChatSession
            None,
            time_to_live=SESSION_TTL_S,
            delete_callback=lambda s: s.close() if isinstance(s, ChatSession) else None,
        )
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = ChatLog(
                    label="Chat",
                    height=520,
                    elem_id="chat",
                    feedback_options=None,
                    placeholder="Upload an image with 📎 or click an example below, then ask "
                    "e.g. *segment the hepatic lesion*. Type *help* for more.",
                )
                box = gr.MultimodalTextbox(
                    placeholder="Ask about the image, e.g. 'segment the hepatic lesion'",
                    file_count="single",
                    sources=["upload"],
                    label="Message",
                    show_label=False,
                    elem_id="message",
                )
            with gr.Column(scale=2):
                view = ViewImage(label="Annotated view", format="png", elem_id="view")
                slider = gr.Slider(
                    minimum=0,
                    maximum=1,
                    value=0,
                    step=1,
                    label="Slice",
                    info="A volume's slices in the file's order, with the last answer's outline",
                    visible=False,
                    elem_id="slice",
                )
                masks = gr.File(
                    label="Masks (PNG at the image's resolution; NIfTI for a volume)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="masks",
                )
        ex = gr.Examples(
            examples=[[{"text": prompt, "files": [path]}] for path, prompt in examples],
            inputs=[box],
            label="Examples (click one to run it)",
            example_labels=[f"{Path(p).stem}: {prompt}" for p, prompt in examples],
        )
        with gr.Accordion("One image, one question (API: /segment)", open=False):
            with gr.Row():
                one_image = gr.File(label="Image", type="filepath", file_count="single")
                with gr.Column():
                    one_text = gr.Textbox(label="What to segment", value="the hepatic lesion")
                    one_button = gr.Button("Segment", variant="primary")
            one_reply = gr.Markdown(label="Reply")
            with gr.Row():
                one_overlay = gr.Image(label="Overlay", type="numpy", format="png")
                one_masks = gr.File(label="Masks", file_count="multiple", interactive=False)

        turn = {
            "fn": chat,
            "inputs": [box, session],
            "outputs": [chatbot, box, view, masks, session],
            "concurrency_id": "model",  # one limit shared by every event that runs the model
            "concurrency_limit": concurrency,
        }
        # the slider follows the session (shown for a volume); /chat and /reset keep their outputs
        sync = {
            "fn": slice_slider,
            "inputs": [session],
            "outputs": [slider],
            "api_visibility": "private",
            "show_progress": "hidden",
        }
        box.submit(**turn, api_name="chat", show_progress="minimal").then(**sync)
        ex.load_input_event.then(**turn, api_visibility="private", show_progress="minimal").then(
            **sync
        )
        chatbot.clear(reset, [session], [chatbot, view, masks, session], api_name="reset").then(
            **sync
        )
        slider.input(
            show_slice,
            [slider, session],
            [view],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_id="slices",  # drawing only: never waits behind the model
            concurrency_limit=4,
        )
        one_button.click(
            segment,
            [one_image, one_text],
            [one_reply, one_overlay, one_masks],
            api_name="segment",
            concurrency_id="model",
            concurrency_limit=concurrency,
        )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    demo.vlseg_service = service  # for tests and for closing
    return demo


def limit_malloc_arenas(n: int, trim_every_s: float | None = MALLOC_TRIM_EVERY_S) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX, n)``, as ``MALLOC_ARENA_MAX`` does;
    arenas that exist already stay) and, every ``trim_every_s`` seconds, hand the memory that
    malloc keeps after ``free`` back to the system (``malloc_trim(0)``, from a daemon thread).

    Returns:
        Whether it was applied (False where the C library is not glibc).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        applied = bool(libc.mallopt(-8, int(n)))  # -8: M_ARENA_MAX in glibc's malloc.h
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    if applied and trim_every_s and not _trimming.is_set():
        _trimming.set()

        def trim_forever() -> None:
            while True:
                time.sleep(trim_every_s)
                trim(0)

        threading.Thread(target=trim_forever, name="vlseg-malloc-trim", daemon=True).start()
    return applied


_trimming = threading.Event()  # one trimming thread per process


def parse_auth(auth: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """``"user:password"`` (or a tuple) -> ``(user, password)``; None stays None."""
    if auth is None or isinstance(auth, tuple):
        return auth
    user, sep, password = str(auth).partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must look like 'user:password' (both non-empty)")
    return user, password


def serve(
    model: str | os.PathLike[str] | Segmenter | None = None,
    index: Any = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | tuple[str, str] | None = None,
    *,
    block: bool = True,
    concurrency: int = TURN_CONCURRENCY,
    torch_threads: int | None = None,
    text_dtype: str | None = None,
    malloc_arenas: int | None = MALLOC_ARENAS,
) -> gr.Blocks:
    """Start the chat service.

    Args:
        model: registered name, checkpoint directory, a ``Segmenter``, or None for the default.
        index: a retrieval index (object or saved directory) for "find similar cases".
        host: interface to bind; the default serves this machine only.
        port: TCP port.
        auth: ``"user:password"`` to require a login (default: ``$VLSEG_AUTH`` if set).
        block: wait until interrupted (False: return the running app, e.g. in tests).
        concurrency: chat turns (and ``/segment`` calls) handled at once.
        torch_threads: torch's intra-op threads for this process (None: leave as set). Under
            load one per call is best: concurrent turns already use the cores, and a thread
            team on a busy CPU spends its time waiting for its descheduled members.
        text_dtype: ``"bfloat16"`` keeps the text tower in bf16 (``vlseg.load``): cheaper new
            prompts on CPUs with AVX512-BF16 or AMX; None: as trained.
        malloc_arenas: the most glibc malloc arenas for this process (None: glibc's default,
            8 per core, and no trimming). Every thread that handles requests would otherwise
            get an arena of its own, each keeping the memory it frees: in
            ``bench/chat_latency.py`` (20 sessions) the resident memory grew ~225 MB with the
            default, 65-110 MB with 2 arenas, 35-50 MB once trimmed (see
            :func:`limit_malloc_arenas`, which also starts the trimming). Set before the
            server's threads start; ignored where the C library is not glibc.

    Returns:
        The launched ``gr.Blocks`` (after shutdown when ``block``).
    """
    creds = parse_auth(auth or os.environ.get("VLSEG_AUTH") or None)
    if malloc_arenas is not None:
        limit_malloc_arenas(malloc_arenas)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(int(torch_threads))
    if isinstance(model, Segmenter):
        seg = model
        if text_dtype is not None:
            seg.set_text_dtype(text_dtype)
    else:
        seg = load(model, text_dtype=text_dtype)
    if isinstance(index, (str, os.PathLike)):
        check_index_model(seg, index)  # embeddings of another model would give wrong cases
    demo = build_demo(seg, load_index(index), concurrency=concurrency)
    if host not in ("127.0.0.1", "localhost", "::1") and creds is None:
        log.warning("serving on %s without --auth: anyone who can reach it can use it", host)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=creds,
        max_file_size=MAX_FILE_SIZE,
        prevent_thread_lock=not block,
        ssr_mode=False,
        footer_links=["api"],
    )
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vlseg chat service (gradio)")
    parser.add_argument("--model", default=None, help="model name or checkpoint dir")
    parser.add_argument("--index", default=None, help="retrieval index directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="user:password (or set $VLSEG_AUTH)")
    parser.add_argument(
        "--concurrency", type=int, default=TURN_CONCURRENCY, help="chat turns handled at once"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: concurrent turns keep the cores busy)",
    )
    parser.add_argument(
        "--text-dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="text tower weights (bfloat16: cheaper new prompts on CPUs with AVX512-BF16/AMX)",
    )
    args = parser.parse_args(argv)
    try:
        parse_auth(args.auth)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vlseg").setLevel(logging.INFO)
    serve_args(args)
    return 0


def serve_args(args: argparse.Namespace) -> gr.Blocks:
    """``serve`` with the options of ``python app.py`` / ``vlseg serve`` (model, index, host,
    port, auth, concurrency, torch_threads)."""
    return serve(
        args.model,
        args.index,
        args.host,
        args.port,
        args.auth,
        concurrency=args.concurrency,
        torch_threads=args.torch_threads,
        text_dtype=args.text_dtype,
    )


if __name__ == "__main__":
    raise SystemExit(main())
