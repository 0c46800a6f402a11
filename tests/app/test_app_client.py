"""The running server, driven through gradio_client: /chat (stateful), /segment, /reset, auth."""

import os
import socket

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytestmark = [
    pytest.mark.slow,
    # gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

USER, PASSWORD = "alice", "s3cret-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from app import serve
    from vlseg.predictor import Segmenter

    seg = Segmenter(tiny_model, image_size=64, threshold=0.0, name="tiny-test")
    port = _free_port()
    demo = serve(seg, host="127.0.0.1", port=port, auth=f"{USER}:{PASSWORD}", block=False)
    yield {"url": f"http://127.0.0.1:{port}/", "seg": seg, "demo": demo}
    demo.close()
    demo.vlseg_service.close()


@pytest.fixture
def client(server, tmp_path):
    return gradio_client.Client(
        server["url"], auth=(USER, PASSWORD), verbose=False, download_files=str(tmp_path)
    )


def _text(history) -> str:
    """The last assistant message's text from a messages-format chat log."""
    msg = history[-1]
    assert msg["role"] == "assistant"
    content = msg["content"] if isinstance(msg["content"], list) else [msg["content"]]
    return "\n".join(c["text"] if isinstance(c, dict) else str(c) for c in content
                     if not isinstance(c, dict) or c.get("type", "text") == "text")  # fmt: skip


def _chat(client, text, path=None):
    files = [gradio_client.handle_file(str(path))] if path else []
    return client.predict({"text": text, "files": files}, api_name="/chat")


def test_endpoints_are_named(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert {"/chat", "/segment", "/reset"} <= set(info["named_endpoints"])


def test_chat_upload_then_follow_up_without_re_encoding(client, server, phantom_pngs):
    seg = server["seg"]
    before = seg.encoder_calls
    history, box, view, masks = _chat(client, "segment the hepatic lesion", phantom_pngs["ct"])
    reply = _text(history)
    assert "**the hepatic lesion**: area" in reply and " px" in reply
    assert view is not None and masks and len(masks) == 1 and os.path.exists(masks[0])
    assert seg.encoder_calls == before + 1
    history, *_ = _chat(client, "the liver and both kidneys")
    reply = _text(history)
    assert "**the liver**: area" in reply and "**both kidneys**: area" in reply
    assert seg.encoder_calls == before + 1, "follow-ups reuse the session's encoded image"
    assert len([m for m in history if m["role"] == "user"]) == 2


def test_bad_inputs_then_a_good_request(client, phantom_pngs, bad_files):
    history, *_ = _chat(client, "segment the liver")
    assert "upload an image first" in _text(history)
    for name in ["notes", "truncated", "bomb"]:
        history, *_ = _chat(client, "segment the liver", bad_files[name])
        assert "I could not use" in _text(history), name
    history, *_ = _chat(client, "x" * 10_000)
    assert "characters long" in _text(history)
    history, *_ = _chat(client, "")
    assert "upload an image first" in _text(history)
    history, *_ = _chat(client, "segment the hepatic lesion", phantom_pngs["ct"])
    assert "**the hepatic lesion**: area" in _text(history)


def test_sessions_are_separate(server, phantom_pngs, tmp_path):
    a = gradio_client.Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    b = gradio_client.Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    _chat(a, "", phantom_pngs["ct"])
    history, *_ = _chat(b, "the liver")
    assert "upload an image first" in _text(history)


def test_reset_forgets_the_image(client, phantom_pngs):
    _chat(client, "", phantom_pngs["ct"])
    client.predict(api_name="/reset")
    history, *_ = _chat(client, "the liver")
    assert "upload an image first" in _text(history)
    assert len(history) == 2


def test_stateless_segment_endpoint(client, phantom_pngs, bad_files):
    reply, overlay, masks = client.predict(
        gradio_client.handle_file(str(phantom_pngs["derm"])), "the skin lesion", api_name="/segment"
    )
    assert "**the skin lesion**: area" in reply and os.path.exists(overlay) and len(masks) == 1
    reply, overlay, masks = client.predict(
        gradio_client.handle_file(str(bad_files["truncated"])), "the liver", api_name="/segment"
    )
    assert "I could not use" in reply and overlay is None


def test_auth_is_required(server):
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises a plain ValueError/AuthError
        gradio_client.Client(server["url"], verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        gradio_client.Client(server["url"], auth=(USER, "wrong"), verbose=False)


def test_chat_volume_upload_measures_and_returns_a_nifti_mask(client, server, volume_files):
    seg = server["seg"]
    before = seg.encoder_calls
    history, box, view, masks = _chat(
        client, "segment the hepatic lesion", volume_files["ct.nii.gz"]
    )
    reply = _text(history)
    assert "**the hepatic lesion**: present: " in reply and " mL" in reply and " mm " in reply
    assert view is not None and masks and masks[0].endswith("_mask.nii.gz")
    assert os.path.exists(masks[0]) and seg.encoder_calls == before + 1
    history, *_ = _chat(client, "how big is it?")
    assert "**the hepatic lesion**: present: " in _text(history)
    history, *_ = _chat(client, "the liver", volume_files["two-volumes.nii.gz"])
    assert "I could not use **two-volumes.nii.gz**" in _text(history)
    history, *_ = _chat(client, "the liver")
    assert "**the liver**: present: " in _text(history), "the server keeps serving the volume"
    assert seg.encoder_calls == before + 1
