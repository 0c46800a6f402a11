"""Gradio wiring for the chat service; all logic is in :mod:`vlseg.chat`.

Run ``python app.py``, ``make run`` or ``vlseg serve``. This module is the only place that imports
gradio: the library (``vlseg``) stays UI-free. API endpoints for
``gradio_client``:

- ``/chat``: one chat turn, ``message={"text": str, "files": [handle_file(path)]}``; returns the
  chat log, the cleared message box, the annotated view and the mask files. The conversation
  (image cache included) is kept per client session. A volume (a 3-D NIfTI or a ``.zip`` of a
  DICOM series) is answered in 3-D: the reply measures it, the view shows the slice with the
  largest finding, and the mask files are NIfTI, aligned with the upload.
- ``/segment``: stateless, ``image=handle_file(path), text=str``; returns the reply (markdown),
  the overlay image and the mask PNGs.
- ``/reset``: forget the session's image and chat log.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from vlseg.chat import RESEARCH_NOTICE, ChatService, ChatSession, TurnOutput, load_index
from vlseg.chat.intents import warm_up as warm_up_intents
from vlseg.indexing import check_index_model
from vlseg.predictor import Segmenter, load

log = logging.getLogger(__name__)

CONCURRENCY_LIMIT = 2  # model calls at once; more queue (the model is shared)
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


def _view(out: TurnOutput):
    if not out.view_changed:
        return gr.skip(), gr.skip()
    view = None
    if out.base is not None:
        anns = [(m.astype(np.float32), label) for m, label in out.annotations]
        view = gr.AnnotatedImage(value=(out.base, anns), color_map=out.colors)
    return view, (out.files or None)


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
    segmenter: Segmenter, index: Any = None, *, examples_dir: str | os.PathLike[str] | None = None
) -> gr.Blocks:
    """The chat UI and its API endpoints (``/chat``, ``/segment``, ``/reset``).

    Args:
        segmenter: the shared model (read-only here; each session caches its own image).
        index: a retrieval index with ``search_meta(vectors, k)`` for "find similar cases".
        examples_dir: where to render the example phantoms (default: a new temp directory).
    """
    service = ChatService(segmenter, index)
    # load the sentence model that reads messages now, not on the first message
    threading.Thread(target=warm_up_intents, name="vlseg-intents", daemon=True).start()
    examples = make_examples(examples_dir or tempfile.mkdtemp(prefix="vlseg-examples-"))

    def chat(message: dict | None, session: ChatSession | None, progress=gr.Progress()):
        session = session if isinstance(session, ChatSession) else ChatSession()
        message = message if isinstance(message, dict) else {"text": str(message or "")}
        out = service.respond(
            session,
            message.get("text") or "",
            message.get("files") or [],
            progress=progress_reporter(progress),
        )
        view, files = _view(out)
        return session.history, None, view, files, session

    def show_slice(index: float | None, session: ChatSession | None):
        if not isinstance(session, ChatSession) or index is None:
            return gr.skip()
        view, _ = _view(service.slice_view(session, index))
        return view

    def reset(session: ChatSession | None):
        if isinstance(session, ChatSession):
            session.close()
        return [], None, None, ChatSession()

    def segment(image: str | None, text: str | None):
        out = service.segment_once(image, text or "")
        return out.reply, out.overlay, (out.files or None)

    with gr.Blocks(title="vlseg chat", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
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
                chatbot = gr.Chatbot(
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
                view = gr.AnnotatedImage(label="Annotated view", format="png", elem_id="view")
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
        )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    demo.vlseg_service = service  # for tests and for closing
    return demo


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
) -> gr.Blocks:
    """Start the chat service.

    Args:
        model: registered name, checkpoint directory, a ``Segmenter``, or None for the default.
        index: a retrieval index (object or saved directory) for "find similar cases".
        host: interface to bind; the default serves this machine only.
        port: TCP port.
        auth: ``"user:password"`` to require a login (default: ``$VLSEG_AUTH`` if set).
        block: wait until interrupted (False: return the running app, e.g. in tests).

    Returns:
        The launched ``gr.Blocks`` (after shutdown when ``block``).
    """
    creds = parse_auth(auth or os.environ.get("VLSEG_AUTH") or None)
    seg = model if isinstance(model, Segmenter) else load(model)
    if isinstance(index, (str, os.PathLike)):
        check_index_model(seg, index)  # embeddings of another model would give wrong cases
    demo = build_demo(seg, load_index(index))
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
    args = parser.parse_args(argv)
    try:
        parse_auth(args.auth)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vlseg").setLevel(logging.INFO)
    serve(args.model, args.index, args.host, args.port, args.auth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
