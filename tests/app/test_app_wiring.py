"""The gradio wiring without a server: endpoints, examples, auth parsing, CLI arguments."""

import shutil
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from app import build_demo, main, make_examples, parse_auth  # noqa: E402


def test_examples_are_phantom_pngs(tmp_path):
    examples = make_examples(tmp_path, size=64)
    assert len(examples) == 3
    assert all(p.endswith(".png") and (tmp_path / p.split("/")[-1]).exists() for p, _ in examples)
    assert "spacing" in examples[1][1]


def test_build_demo_names_the_api_endpoints(tiny_seg, tmp_path):
    demo = build_demo(tiny_seg, examples_dir=tmp_path)
    try:
        names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
        assert {"chat", "segment", "reset"} <= names
        assert demo._queue.default_concurrency_limit == 2
    finally:
        demo.vlseg_service.close()


def test_build_demo_rejects_an_index_without_search_meta(tiny_seg, tmp_path):
    with pytest.raises(TypeError, match="search_meta"):
        build_demo(tiny_seg, index=object(), examples_dir=tmp_path)


@pytest.mark.parametrize(
    "auth, expected",
    [(None, None), ("u:p", ("u", "p")), ("u:p:q", ("u", "p:q")), (("a", "b"), ("a", "b"))],
)
def test_parse_auth(auth, expected):
    assert parse_auth(auth) == expected


@pytest.mark.parametrize("auth", ["nopassword", ":p", "u:"])
def test_parse_auth_rejects(auth):
    with pytest.raises(ValueError, match="user:password"):
        parse_auth(auth)


def test_cli_rejects_bad_auth(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--auth", "nopassword"])
    assert exc.value.code == 2 and "user:password" in capsys.readouterr().err


def test_chat_log_sends_earlier_cached_files_as_references(tmp_path):
    from gradio.utils import get_upload_folder

    from app import ChatLog, LogUpdate, _cache_root

    Path(get_upload_folder()).mkdir(parents=True, exist_ok=True)
    cached = Path(_cache_root()) / "vlseg-test-ref" / "overlay.png"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"png")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    try:
        log = [
            {"role": "user", "content": ["hi"]},
            {"role": "assistant", "content": ["a", {"path": str(cached)}, {"path": str(outside)}]},
            {"role": "user", "content": ["again"]},
            {"role": "assistant", "content": ["b", {"path": str(cached)}]},
        ]
        out = ChatLog().postprocess(LogUpdate(log, new_from=2))
        assert isinstance(LogUpdate(log, 2), list) and len(out) == 4
        earlier = [c["file"] for c in out[1]["content"] if c["type"] == "file"]
        assert earlier[0]["path"] is None and earlier[0]["url"].endswith("overlay.png")
        assert earlier[0]["meta"] == {} and earlier[0]["orig_name"] == "overlay.png"
        # a file outside gradio's cache is left to gradio, as is everything of this turn
        assert earlier[1]["path"] == str(outside) and earlier[1]["meta"]["_type"]
        (new,) = [c["file"] for c in out[3]["content"] if c["type"] == "file"]
        assert new["path"] == str(cached) and new["meta"]["_type"] == "gradio.FileData"
        assert ChatLog().postprocess(log).model_dump() == ChatLog().postprocess(LogUpdate(log, 0))
    finally:
        shutil.rmtree(cached.parent, ignore_errors=True)


def test_view_value_sends_a_session_its_base_image_once():
    import numpy as np

    from app import ViewImage, view_value

    base = np.full((40, 50, 3), 90, np.uint8)
    mask = np.zeros((40, 50), np.float32)
    mask[5:20, 10:30] = 1
    sent: set[str] = set()
    first = view_value(base, [(mask, "the liver")], {"the liver": "#00ff00"}, sent)
    again = view_value(base, [(mask, "the liver")], {"the liver": "#00ff00"}, sent)
    assert first["image"]["path"] in sent and again["image"]["path"] is None
    assert again["image"]["url"].endswith(Path(first["image"]["path"]).name)
    layer = Path(first["annotations"][0]["image"]["path"])
    from PIL import Image

    rgba = np.asarray(Image.open(layer))
    assert rgba.shape == (40, 50, 4) and tuple(rgba[10, 15]) == (0, 255, 0, 255)
    assert tuple(rgba[0, 0]) == (0, 0, 0, 0)
    # gradio's own drawing of the same value gives the same pixels
    theirs = gr.AnnotatedImage(color_map={"the liver": "#00ff00"}, format="png").postprocess(
        (base, [(mask, "the liver")])
    )
    ref = np.asarray(Image.open(theirs.annotations[0].image.path))
    np.testing.assert_array_equal(rgba, ref)
    ours = ViewImage(color_map={"the liver": "#00ff00"}, format="png").postprocess(
        (base, [(mask, "the liver")])
    )
    assert ours["annotations"][0]["image"]["path"] == str(layer)
    assert ViewImage().postprocess(first) is first


def test_limit_malloc_arenas_never_raises():
    from app import limit_malloc_arenas

    assert limit_malloc_arenas(2, trim_every_s=None) in (True, False)
