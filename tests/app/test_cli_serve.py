"""`vlseg serve` starts the same service as `python app.py`, with the same load settings."""

import app
from vlseg.cli import main as cli_main


def test_vlseg_serve_passes_threads_and_concurrency(monkeypatch):
    calls = []
    monkeypatch.setattr(app, "serve", lambda *a, **kw: calls.append((a, kw)))
    assert cli_main(["serve", "--model", "m", "--port", "7999"]) == 0
    ((args, kw),) = calls
    assert args == ("m", None, "127.0.0.1", 7999, None)
    assert kw == {"concurrency": app.TURN_CONCURRENCY, "torch_threads": 1, "text_dtype": None}
    argv = ["--concurrency", "3", "--torch-threads", "2", "--text-dtype", "bfloat16"]
    assert cli_main(["serve", *argv]) == 0
    assert calls[-1][1] == {"concurrency": 3, "torch_threads": 2, "text_dtype": "bfloat16"}
    assert app.main(argv) == 0  # python app.py
    assert calls[-1] == calls[-2]
