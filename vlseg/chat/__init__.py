"""Chat service logic: intents, per-session image cache, replies, overlays (no gradio here).

    >>> from vlseg.chat import ChatService, ChatSession
    >>> service = ChatService(vlseg.load())                      # doctest: +SKIP
    >>> session = ChatSession()
    >>> out = service.respond(session, "segment the liver", ["ct.png"])  # doctest: +SKIP
    >>> out.reply                                                # doctest: +SKIP
    '**the liver**: area 4,210 px, 1 connected component (presence 0.97)'

``app.py`` wires this to gradio.
"""

from .intents import INTENTS, Intent, parse_message, split_targets
from .replies import HELP_TEXT, RESEARCH_NOTICE
from .service import (
    MAX_MESSAGE_CHARS,
    MAX_UPLOAD_PIXELS,
    MAX_UPLOAD_VOXELS,
    ChatService,
    TurnOutput,
    load_index,
)
from .session import (
    ChatSession,
    VolumeOverlay,
    classify_cached,
    encode_image,
    encode_volume,
    image_embedding,
    search_similar,
    segment_cached,
)
from .worker import ModelWorker, concat_encoded

__all__ = [
    "HELP_TEXT",
    "INTENTS",
    "MAX_MESSAGE_CHARS",
    "MAX_UPLOAD_PIXELS",
    "MAX_UPLOAD_VOXELS",
    "RESEARCH_NOTICE",
    "ChatService",
    "ChatSession",
    "Intent",
    "ModelWorker",
    "TurnOutput",
    "VolumeOverlay",
    "classify_cached",
    "concat_encoded",
    "encode_image",
    "encode_volume",
    "image_embedding",
    "load_index",
    "parse_message",
    "search_similar",
    "segment_cached",
    "split_targets",
]
