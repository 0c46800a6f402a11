"""Chat-turn latency: the library alone vs the gradio app through gradio_client, and under load.

One process: load the model, serve ``app.py`` on a free local port, render a phantom CT PNG,
then time (a) ``Segmenter.set_image`` + ``segment`` and follow-up ``segment`` calls, (b) ``/chat``
turns from one gradio_client (first = upload + prompt; follow-ups = text, same session), (c)
``--clients`` threads, each with its own Client, doing one first turn and ``--turns`` follow-ups.
Client times are ``Client.predict`` wall times (upload, queue, turn, reply, and downloading the
returned files unless ``--no-download``).

    python bench/chat_latency.py --turns 10 --clients 10 --json runs/bench/chat_latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py is at the repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

import vlseg  # noqa: E402
from app import CONCURRENCY_LIMIT, serve  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.data.phantoms import generate_sample  # noqa: E402

FIRST_TEXT, FIRST_TARGET = "segment the hepatic lesion", "the hepatic lesion"
FOLLOW_UPS = ("the liver", "both kidneys", "the spleen", "the hepatic lesion")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def follow_texts(n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(FOLLOW_UPS), n))


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def stats(ms: list[float]) -> dict:
    return {"n": len(ms), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def bench_library(seg, path: str, turns: int, warmup: int) -> tuple[list[float], list[float]]:
    """First turns (set_image + segment) and follow-ups (segment on the cached image)."""
    firsts = []
    for i in range(warmup + turns):
        t0 = time.perf_counter()
        seg.set_image(path)
        seg.segment(text=FIRST_TARGET)
        if i >= warmup:
            firsts.append(ms_since(t0))
    calls, follows = seg.encoder_calls, []
    for text in follow_texts(turns):
        t0 = time.perf_counter()
        seg.segment(text=text)
        follows.append(ms_since(t0))
    assert seg.encoder_calls == calls, "follow-ups must not re-run the image encoder"
    return firsts, follows


def turn(client: Client, text: str, target: str, path: str | None = None) -> float:
    """One timed /chat turn; checks that the reply is about ``target``."""
    files = [handle_file(path)] if path else []
    t0 = time.perf_counter()
    history, *_ = client.predict({"text": text, "files": files}, api_name="/chat")
    ms = ms_since(t0)
    last = history[-1]
    if last["role"] != "assistant" or f"**{target}**" not in str(last["content"]):
        raise RuntimeError(f"unexpected reply to {text!r}: {str(last['content'])[:300]}")
    return ms


def client_turns(client, path, n_first, n_follow, warmup=0) -> tuple[list[float], list[float]]:
    firsts = []
    for i in range(warmup + n_first):
        if i:  # untimed: every first turn starts from an empty session
            client.predict(api_name="/reset")
        ms = turn(client, FIRST_TEXT, FIRST_TARGET, path)
        if i >= warmup:
            firsts.append(ms)
    return firsts, [turn(client, t, t) for t in follow_texts(n_follow)]


def bench_load(make_client, path, clients: int, turns: int) -> tuple[list, list, float]:
    """``clients`` threads, each with its own Client, start together after connecting."""
    barrier = threading.Barrier(clients + 1)
    results: list = [None] * clients
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            c = make_client()
            barrier.wait()
            results[i] = client_turns(c, path, 1, turns)
            c.close()
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed") from errors[0]
    firsts = [ms for f, _ in results for ms in f]
    follows = [ms for _, fu in results for ms in fu]
    return firsts, follows, wall


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name or checkpoint dir (default model)")
    p.add_argument("--turns", type=int, default=10, help="timed turns per row (and follow-ups)")
    p.add_argument("--clients", type=int, default=10, help="concurrent clients under load")
    p.add_argument("--warmup", type=int, default=1, help="untimed first turns before timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-download", action="store_true", help="clients skip result files")
    p.add_argument("--json", default=None, metavar="OUT", help="also write results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    seg = vlseg.load(a.model)
    with tempfile.TemporaryDirectory(prefix="vlseg-chat-bench-") as tmp:
        sample = generate_sample(seed=7, index=0, modality="ct")
        path = str(Path(tmp) / f"{sample.id}.png")
        Image.fromarray(sample.image).save(path)
        lib_first, lib_follow = bench_library(seg, path, a.turns, a.warmup)

        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        demo = serve(seg, host="127.0.0.1", port=port, block=False)
        downloads = False if a.no_download else str(Path(tmp) / "downloads")
        make_client = lambda: Client(url, verbose=False, download_files=downloads)  # noqa: E731
        try:
            client = make_client()
            cli_first, cli_follow = client_turns(client, path, a.turns, a.turns, a.warmup)
            client.close()
            load_first, load_follow, wall = bench_load(make_client, path, a.clients, a.turns)
        finally:
            demo.close()
            demo.vlseg_service.close()

    raw = {"library_first": lib_first, "library_followup": lib_follow, "client_first": cli_first,
           "client_followup": cli_follow, "concurrent_first": load_first,
           "concurrent_followup": load_follow}  # fmt: skip
    rows = {k: stats(v) for k, v in raw.items()}
    n_load = len(load_first) + len(load_follow)
    throughput = {"turns": n_load, "wall_s": wall, "turns_per_s": n_load / wall}
    med = {k: v["median_ms"] for k, v in rows.items()}
    ratios = {
        "client_first / library_first": med["client_first"] / med["library_first"],
        "client_followup / library_followup": med["client_followup"] / med["library_followup"],
        "concurrent_followup p90 / client_followup median": rows["concurrent_followup"]["p90_ms"]
        / med["client_followup"],
    }
    settings = dict(
        model=seg.name, device=str(seg.device), image=f"{sample.id} {sample.image.shape}",
        turns=a.turns, clients=a.clients, warmup=a.warmup, download_files=not a.no_download,
        server_concurrency_limit=CONCURRENCY_LIMIT, torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
    )  # fmt: skip
    print(f"settings: {settings}")
    print(f"\n{'row':<22}{'n':>5}{'median ms':>12}{'p90 ms':>10}")
    for k, v in rows.items():
        print(f"{k:<22}{v['n']:>5}{v['median_ms']:>12.1f}{v['p90_ms']:>10.1f}")
    tps = throughput["turns_per_s"]
    print(f"\nunder load: {n_load} turns, {a.clients} clients, {wall:.2f} s: {tps:.2f} turns/s")
    print(f"\n{'ratio':<50}{'value':>8}")
    for k, v in ratios.items():
        print(f"{k:<50}{v:>7.1f}x")

    result = {"settings": settings, "rows": rows, "throughput": throughput, "ratios": ratios,
              "raw_ms": raw}  # fmt: skip
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
