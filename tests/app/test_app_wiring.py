"""The gradio wiring without a server: endpoints, examples, auth parsing, CLI arguments."""

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
