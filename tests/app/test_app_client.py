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


def test_earlier_files_come_back_as_references(client, phantom_pngs):
    """Only a turn's own files are files; earlier ones (and the view's image, unchanged since the
    last turn) come as URLs, so a turn's cost does not grow with the conversation."""
    _chat(client, "segment the liver", phantom_pngs["ct"])
    history, _, view1, _ = _chat(client, "the liver")
    history, _, view2, masks = _chat(client, "both kidneys")
    files = [
        c["file"]
        for m in history
        for c in (m["content"] if isinstance(m["content"], list) else [])
        if isinstance(c, dict) and c.get("type") == "file"
    ]
    *earlier, last = files
    assert len(earlier) == 3  # the upload's thumbnail and two overlays
    for f in earlier:
        assert f["path"] is None and "/file=" in f["url"] and f["url"].endswith(".png"), f
    assert isinstance(last, str) and os.path.exists(last) and last.endswith("overlay.png")
    assert masks and os.path.exists(masks[0])
    # the view's base image was sent with the upload; the masks are new each turn
    image1, image2 = view1["value"]["image"], view2["value"]["image"]  # view updates
    assert image2["path"] is None and image2["url"] == image1["url"]
    assert os.path.exists(view2["value"]["annotations"][0]["image"])  # downloaded


def test_concurrent_sessions_get_their_own_answers(server, phantom_pngs, tmp_path):
    """Clients talking at once, each on its own image (of its own size: at threshold 0 the area
    is the whole image), never see another session's answer."""
    import threading

    from PIL import Image

    from vlseg.data.phantoms import generate_sample

    third = tmp_path / "ct72.png"
    Image.fromarray(generate_sample(seed=3, index=1, modality="ct", size=72).image).save(third)
    images = {"ct": phantom_pngs["ct"], "derm": phantom_pngs["derm"], "ct72": third}
    areas = {k: Image.open(p).size[0] * Image.open(p).size[1] for k, p in images.items()}
    assert len(set(areas.values())) == 3
    replies, errors = {}, []
    start = threading.Barrier(len(images))

    def talk(key):
        try:
            c = gradio_client.Client(server["url"], auth=(USER, PASSWORD), verbose=False)
            start.wait()
            history, *_ = _chat(c, "segment the liver", images[key])
            got = [_text(history)]
            for text in ["both kidneys", "the spleen", "the liver"]:
                history, *_ = _chat(c, text)
                got.append(_text(history))
            replies[key] = (got, [m["role"] for m in history])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(k,)) for k in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key, (got, roles) in replies.items():
        assert all(f": area {areas[key]:,} px" in reply for reply in got), (key, got)
        assert roles == ["user", "assistant"] * 4, "each log is its own session's"
