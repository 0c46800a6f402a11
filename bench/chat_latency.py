"""Chat-turn latency: the library alone vs the gradio app through gradio_client, and under load.

One process: load the model, serve ``app.py`` on a free local port, render phantom CT PNGs,
then time (a) ``Segmenter.set_image`` + ``segment`` and follow-up ``segment`` calls, (b) ``/chat``
turns from one gradio_client (first = upload + prompt; follow-ups = text, same session), (c)
``--clients`` threads, each with its own Client and its own phantom image, doing one upload turn
and ``--turns`` more: follow-ups, one question answered from the last result ("how big is
it?") and one corrupt upload (a truncated PNG; the session keeps its image).

Client times are ``Client.predict`` wall times (upload, queue, turn, reply, and downloading the
returned files unless ``--no-download``). Under load every reply is checked against the
library's answer on that client's own image (cross-talk between sessions fails the run), and the
report gives throughput, p50/p95 per turn kind, errors, the process's CPU seconds per turn and
its memory (RSS) before and after the load. Client and server share this process (and its
CPUs), as in the earlier runs. ``--profile`` adds where the process's time goes (model calls,
sentence embedding, rendering and PNG writes, gradio's postprocessing and file caching, file
downloads, per-thread CPU).

    python bench/chat_latency.py --turns 25 --clients 20 --json runs/bench/chat_latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import inspect
import itertools
import multiprocessing
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py is at the repo root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # segment_latency.cpu_info

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
import vlseg  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.chat.replies import describe  # noqa: E402
from vlseg.data.phantoms import generate_sample  # noqa: E402

# older app.py versions (for before/after runs) had one concurrency limit and no model worker
TURN_CONCURRENCY = getattr(app, "TURN_CONCURRENCY", getattr(app, "CONCURRENCY_LIMIT", 2))

FIRST_TEXT, FIRST_TARGET = "segment the hepatic lesion", "the hepatic lesion"
FOLLOW_UPS = ("the liver", "both kidneys", "the spleen", "the hepatic lesion")
QUESTION = "how big is it?"  # answered from the last result: no model run
KINDS = ("upload", "follow-up", "question", "corrupt")
N_IMAGES = 4  # client i uploads phantom i % N_IMAGES: a reply about another image is cross-talk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def follow_texts(n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(FOLLOW_UPS), n))


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0, "median_ms": float("nan"), "p90_ms": float("nan"), "p95_ms": float("nan")}
    return {
        "n": len(ms),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``, or ``VmHWM`` for the peak) in MB."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def malloc_trim_rss() -> float | None:
    """RSS (MB) after handing malloc's freed memory back (glibc ``malloc_trim``): what the
    process holds, not what it freed and malloc kept; None off glibc."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_mb()


def cpu_info() -> dict:
    try:
        from segment_latency import cpu_info as info  # the other benchmarks' CPU description

        return info()
    except ImportError:  # its model imports are missing: the model name alone
        import platform

        return {"cpu_model": platform.processor() or platform.machine()}


# -- the scripted conversation ---------------------------------------------------------------


def script(turns: int) -> list[tuple[str, str]]:
    """(kind, text) of the ``turns`` turns after the upload: follow-ups, with one question and
    one corrupt upload (the same text as a follow-up, so its reply can be told apart)."""
    kinds = ["follow-up"] * turns
    if turns >= 3:
        kinds[turns // 3] = "question"
    if turns >= 2:
        kinds[turns // 2] = "corrupt"
    texts = iter(follow_texts(turns))
    return [(k, QUESTION if k == "question" else next(texts)) for k in kinds]


AREA = re.compile(r"([\d,]+) px")


def line_for(reply: str, target: str) -> str | None:
    for line in reply.splitlines():
        line = line.removeprefix("- ")
        if line.startswith(f"**{target}**:"):
            return line
    return None


def area_of(line: str) -> int:
    m = AREA.search(line)
    return int(m.group(1).replace(",", "")) if m else 0


def same_answer(got: str, want: str) -> bool:
    """Reply lines agree up to float rounding (a pixel or two of area, a flip at threshold)."""
    if got == want:
        return True
    a, b = area_of(got), area_of(want)
    return abs(a - b) <= max(3, 0.01 * max(a, b))


def last_text(history) -> str:
    msg = history[-1]
    if msg["role"] != "assistant":
        raise RuntimeError(f"the last message is not the assistant's: {str(msg)[:200]}")
    content = msg["content"] if isinstance(msg["content"], list) else [msg["content"]]
    return "\n".join(
        c["text"] if isinstance(c, dict) else str(c)
        for c in content
        if not isinstance(c, dict) or c.get("type", "text") == "text"
    )


def user_texts(history) -> list[str]:
    out = []
    for msg in history:
        if msg["role"] != "user":
            continue
        content = msg["content"] if isinstance(msg["content"], list) else [msg["content"]]
        texts = [
            c["text"] if isinstance(c, dict) else str(c)
            for c in content
            if not isinstance(c, dict) or c.get("type", "text") == "text"
        ]
        out.append(" ".join(texts))
    return out


class Conversation:
    """One client's session: sends turns, times them, checks each reply against the library's
    answers on its own image (``expected[target]``, a ``describe`` line)."""

    def __init__(self, client: Client, image: str, corrupt: str, expected: dict[str, str]):
        self.client, self.image, self.corrupt, self.expected = client, image, corrupt, expected
        self.sent: list[str] = []
        self.last_target = ""
        self.times: dict[str, list[float]] = defaultdict(list)

    def turn(self, kind: str, text: str) -> None:
        path = {"upload": self.image, "corrupt": self.corrupt}.get(kind)
        files = [handle_file(path)] if path else []
        t0 = time.perf_counter()
        out = self.client.predict({"text": text, "files": files}, api_name="/chat")
        ms = ms_since(t0)
        history = out[0] if isinstance(out, (list, tuple)) else out
        self.sent.append(text)
        reply = last_text(history)
        if kind == "corrupt":
            target = None
            if "I could not use" not in reply:
                raise RuntimeError(f"a corrupt upload was not refused: {reply[:300]}")
        elif kind == "question":
            target = self.last_target
        else:
            target = FIRST_TARGET if kind == "upload" else text
        if target is not None:
            got, want = line_for(reply, target), self.expected[target]
            if got is None or not same_answer(got, want):
                raise RuntimeError(
                    f"cross-talk or a wrong answer to {text!r}: got {got!r}, the library says "
                    f"{want!r}"
                )
            self.last_target = target
        if user_texts(history) != self.sent[-len(user_texts(history)) :]:
            raise RuntimeError(f"the chat log is not this session's: {user_texts(history)}")
        self.times[kind].append(ms)


# -- the rows ----------------------------------------------------------------------------------


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


def bench_single(make_client, image, corrupt, expected, turns, warmup):
    """One client: ``turns`` first turns (each on a fresh session) and ``turns`` follow-ups."""
    client = make_client()
    firsts = []
    for i in range(warmup + turns):
        if i:  # untimed: every first turn starts from an empty session
            client.predict(api_name="/reset")
        conv = Conversation(client, image, corrupt, expected)
        conv.turn("upload", FIRST_TEXT)
        if i >= warmup:
            firsts += conv.times["upload"]
    for text in follow_texts(turns):
        conv.turn("follow-up", text)
    client.close()
    return firsts, conv.times["follow-up"]


def run_clients(ids, client_kwargs, images, corrupt, expected, turns, barrier):
    """Threads for clients ``ids`` (each its own Client and image); they start together at
    ``barrier``. Returns (per-kind times, error messages, this process's CPU seconds)."""
    convs: list[Conversation] = []
    errors: list[str] = []
    plan = script(turns)
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            c = Client(**client_kwargs)
            image = images[i % len(images)]
            conv = Conversation(c, image, corrupt, expected[image])
            with lock:
                convs.append(conv)
            barrier.wait()
            conv.turn("upload", FIRST_TEXT)
            for kind, text in plan:
                conv.turn(kind, text)
            c.close()
        except BaseException as exc:  # counted and reported by the caller
            with lock:
                errors.append(f"client {i}: {type(exc).__name__}: {str(exc)[:300]}")
            with contextlib.suppress(threading.BrokenBarrierError, ValueError, OSError):
                barrier.abort()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"client-{i} (worker)", daemon=True)
        for i in ids
    ]
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for conv in convs:
        for k, v in conv.times.items():
            times[k] += v
    return times, errors, time.process_time() - cpu0


def client_process(ids, client_kwargs, images, corrupt, expected, turns, barrier, results):
    """A process of client threads (own interpreter: clients never hold the server's GIL)."""
    results.put(run_clients(ids, client_kwargs, images, corrupt, expected, turns, barrier))


def bench_load(client_kwargs, images, corrupt, expected, clients: int, turns: int, procs: int):
    """``clients`` clients, each with its own Client and image, start together after
    connecting: threads of this process (``procs`` 0) or of ``procs`` processes.

    Returns:
        per-kind times, error messages, wall seconds, this (the server's) process's CPU
        seconds, and the client processes' CPU seconds (None for in-process clients).
    """
    if procs <= 0:
        barrier = threading.Barrier(clients + 1)
        box: list = []
        runner = threading.Thread(
            target=lambda: box.append(
                run_clients(
                    range(clients), client_kwargs, images, corrupt, expected, turns, barrier
                )
            ),
            daemon=True,
        )
        runner.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a failure: reported below
            barrier.wait()
        t0, cpu0 = time.perf_counter(), time.process_time()
        runner.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        times, errors, _ = box[0]
        return times, errors, wall, cpu, None
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running a server
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    groups = [list(range(clients))[k::procs] for k in range(procs)]
    workers = [
        ctx.Process(
            target=client_process,
            args=(g, client_kwargs, images, corrupt, expected, turns, barrier, results),
            daemon=True,
        )
        for g in groups
        if g
    ]
    for w in workers:
        w.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=600)
    t0, cpu0 = time.perf_counter(), time.process_time()
    parts = [results.get() for _ in workers]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for w in workers:
        w.join()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    for t, e, _ in parts:
        errors += e
        for k, v in t.items():
            times[k] += v
    return times, errors, wall, cpu, sum(c for _, _, c in parts)


# -- profiling ---------------------------------------------------------------------------------


class Profile:
    """Wall and CPU time of chosen functions, summed over all threads.

    A sync function's CPU time is its thread's (``time.thread_time``): what it cost the CPUs,
    whatever else ran meanwhile. An ``async`` one gets wall time only (it shares its thread
    with every other coroutine on the event loop). Nested entries are not subtracted.
    """

    def __init__(self):
        self.rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.lock = threading.Lock()
        self.undo: list[tuple[object, str, object]] = []

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self.lock:
            row = self.rows[name]
            row[0] += 1
            row[1] += wall
            row[2] += cpu

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = inspect.getattr_static(owner, attr)
        bare = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        prof = self

        if inspect.iscoroutinefunction(bare):

            @functools.wraps(bare)
            async def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return await bare(*args, **kwargs)
                finally:
                    prof.add(name, time.perf_counter() - t0, float("nan"))

        else:

            @functools.wraps(bare)
            def timed(*args, **kwargs):
                t0, c0 = time.perf_counter(), time.thread_time()
                try:
                    return bare(*args, **kwargs)
                finally:
                    prof.add(name, time.perf_counter() - t0, time.thread_time() - c0)

        new = type(fn)(timed) if isinstance(fn, (staticmethod, classmethod)) else timed
        self.undo.append((owner, attr, fn))
        setattr(owner, attr, new)

    def install(self) -> None:
        import gradio as gr
        from gradio import blocks, processing_utils, route_utils
        from gradio_client import client as gc_client

        from vlseg.chat import render, sentences, service
        from vlseg.predictor import Segmenter

        try:
            from vlseg.chat import worker
        except ImportError:
            worker = None
        spots = [
            (Segmenter, "encode", "model: Segmenter.encode (image encoder)"),
            (Segmenter, "decode", "model: Segmenter.decode (text + decoder)"),
            (Segmenter, "postprocess", "model: Segmenter.postprocess"),
            (Segmenter, "segment", "model: Segmenter.segment (all of it)"),
            (service, "parse_message", "intents: parse_message (sentence embedding, grammar)"),
            (sentences, "embed", "intents: sentences.embed (MiniLM, uncached)"),
            (render, "render_overlay", "render: render_overlay"),
            (render, "to_display", "render: to_display"),
            (render, "write_png", "render: write_png (PNG encode + write)"),
            (render, "write_mask_files", "render: write_mask_files (mask PNGs)"),
            (service.ChatService, "respond", "turn: ChatService.respond (all of it)"),
            (gr.Chatbot, "postprocess", "gradio: Chatbot.postprocess"),
            (gr.AnnotatedImage, "postprocess", "gradio: AnnotatedImage.postprocess"),
            (gr.File, "postprocess", "gradio: File.postprocess"),
            (processing_utils, "hash_file", "gradio: hash_file (sha256 of a returned file)"),
            (processing_utils, "save_file_to_cache", "gradio: save_file_to_cache"),
            (blocks.Blocks, "preprocess_data", "gradio: Blocks.preprocess_data (async)"),
            (blocks.Blocks, "postprocess_data", "gradio: Blocks.postprocess_data (async)"),
            (blocks.Blocks, "process_api", "gradio: Blocks.process_api (async)"),
            (blocks.Blocks, "call_function", "gradio: Blocks.call_function (async)"),
            (route_utils, "call_process_api", "gradio: call_process_api (async)"),
            (gc_client.Endpoint, "_download_file", "client: download one file"),
            (gc_client.Endpoint, "_upload_file", "client: upload one file"),
            (gc_client.Client, "predict", "client: Client.predict (all of it)"),
        ]
        for cls in ("ChatLog", "ViewImage"):
            if cls in vars(app):
                spots.append((getattr(app, cls), "postprocess", f"gradio: {cls}.postprocess (app)"))
        if worker is not None and hasattr(worker, "ModelWorker"):
            spots.append((worker.ModelWorker, "_run_batch", "model: ModelWorker._run_batch"))
        for owner, attr, name in spots:
            if hasattr(owner, attr):
                self.wrap(owner, attr, name)

    def uninstall(self) -> None:
        for owner, attr, fn in reversed(self.undo):
            setattr(owner, attr, fn)
        self.undo.clear()

    def report(self, turns: int) -> dict:
        return {
            name: {
                "calls": int(n),
                "wall_ms_per_turn": w * 1e3 / turns,
                "cpu_ms_per_turn": c * 1e3 / turns,
            }
            for name, (n, w, c) in sorted(self.rows.items())
        }


def thread_label(t: threading.Thread) -> str:
    name = t.name
    if name.startswith("AnyIO worker"):
        return "server: anyio workers (handlers, component postprocess)"
    if name.endswith("(run)"):
        return "server: event loop (HTTP, queue, file caching, JSON, file serving)"
    if name.endswith("(worker)"):
        return "bench: client threads"
    if name.startswith("ThreadPoolExecutor"):
        return "client: gradio_client jobs (SSE, JSON, uploads, downloads)"
    if name.startswith("vlseg"):
        return "server: vlseg model worker"
    return re.sub(r"[-_ ]?\d+.*$", "", name) or name


class ThreadCPU:
    """CPU seconds of this process's threads while it runs (sampled from /proc every second, so
    threads that end meanwhile are counted), grouped by kind (:func:`thread_label`)."""

    def __init__(self, every: float = 1.0):
        self.every, self.cpu, self.labels = every, {}, {}
        self.start, self.stop_event = self._sample(), threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self.thread.start()

    @staticmethod
    def _sample() -> dict[int, float]:
        out, tick = {}, os.sysconf("SC_CLK_TCK")
        for task in Path("/proc/self/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def _loop(self) -> None:
        while not self.stop_event.wait(self.every):
            self._record()

    def _record(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self.labels[t.native_id] = thread_label(t)
        self.cpu.update(self._sample())

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.thread.join()
        self._record()
        groups: dict[str, float] = defaultdict(float)
        for tid, cpu in self.cpu.items():
            label = self.labels.get(tid, "native threads (torch intra-op, tokenizers)")
            groups[label] += cpu - self.start.get(tid, 0.0)
        return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name or checkpoint dir (default model)")
    p.add_argument("--turns", type=int, default=10, help="timed turns per row (and follow-ups)")
    p.add_argument("--clients", type=int, default=10, help="concurrent clients under load")
    p.add_argument("--warmup", type=int, default=1, help="untimed first turns before timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-download", action="store_true", help="clients skip result files")
    p.add_argument(
        "--client-tls-context",
        action="store_true",
        help="let gradio_client build its TLS context per request (the CPU it takes is shared "
        "with the server here)",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="processes the load's client threads run in (0: threads of the server's process, "
        "sharing its GIL, as before)",
    )
    p.add_argument(
        "--concurrency", type=int, default=TURN_CONCURRENCY, help="chat turns handled at once"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="the model worker's wait for company (default: the app's; negative: no worker)",
    )
    p.add_argument("--load-only", action="store_true", help="skip the library and 1-client rows")
    p.add_argument("--profile", action="store_true", help="time the parts of each turn")
    p.add_argument("--json", default=None, metavar="OUT", help="also write results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load_avg0 = os.getloadavg()  # other processes on these CPUs change every number below
    seg = vlseg.load(a.model)
    with tempfile.TemporaryDirectory(prefix="vlseg-chat-bench-") as tmp:
        images = []
        for i in range(N_IMAGES):
            sample = generate_sample(seed=7, index=i, modality="ct")
            path = str(Path(tmp) / f"{sample.id}.png")
            Image.fromarray(sample.image).save(path)
            images.append(path)
        corrupt = str(Path(tmp) / "corrupt.png")
        Path(corrupt).write_bytes(Path(images[0]).read_bytes()[:200])
        targets = dict.fromkeys([FIRST_TARGET, *FOLLOW_UPS])
        expected = {}  # per image: target -> the library's reply line
        for im in images:
            answers = seg.segment(im, list(targets))
            expected[im] = {t: describe(r) for t, r in zip(targets, answers, strict=True)}
        lib_first = lib_follow = cli_first = cli_follow = []
        if not a.load_only:
            lib_first, lib_follow = bench_library(seg, images[0], a.turns, a.warmup)

        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        kw = {"concurrency": a.concurrency}
        if "concurrency" not in inspect.signature(app.serve).parameters:
            kw = {}  # an older app.py: its own fixed limit
        demo = app.serve(seg, host="127.0.0.1", port=port, block=False, **kw)
        service = demo.vlseg_service
        worker = getattr(service, "worker", None)
        if a.batch_wait_ms is not None and a.batch_wait_ms < 0 and worker is not None:
            worker.close()
            service.worker = None  # every turn calls the model itself
        elif a.batch_wait_ms is not None and worker is not None:
            worker.wait_s = a.batch_wait_ms / 1e3
        downloads = False if a.no_download else str(Path(tmp) / "downloads")
        # The server is plain HTTP on 127.0.0.1, so TLS is never used; but gradio_client builds a
        # CA-verifying TLS context for every request and download (~23 ms CPU each), which would
        # be charged to the server's CPUs here. A remote client pays that on its own machine.
        client_kwargs = dict(
            src=url, verbose=False, download_files=downloads, ssl_verify=a.client_tls_context
        )
        make_client = lambda: Client(**client_kwargs)  # noqa: E731
        prof = Profile() if a.profile else None
        try:
            if not a.load_only:
                cli_first, cli_follow = bench_single(
                    make_client, images[0], corrupt, expected[images[0]], a.turns, a.warmup
                )
            else:  # one untimed turn: the sentence model and gradio's first-call paths load
                bench_single(make_client, images[0], corrupt, expected[images[0]], 0, 1)
            gc.collect()
            rss0 = rss_mb()
            if prof is not None:
                prof.install()
            sampler = ThreadCPU() if prof is not None else None
            times, errors, wall, cpu, client_cpu = bench_load(
                client_kwargs, images, corrupt, expected, a.clients, a.turns, a.client_processes
            )
            by_thread = sampler.stop() if sampler is not None else {}
            if prof is not None:
                prof.uninstall()
            gc.collect()
            rss1, peak = rss_mb(), rss_mb("VmHWM")
            rss_trimmed = malloc_trim_rss()
        finally:
            demo.close()
            demo.vlseg_service.close()

    raw = {"library_first": lib_first, "library_followup": lib_follow, "client_first": cli_first,
           "client_followup": cli_follow}  # fmt: skip
    rows = {k: stats(v) for k, v in raw.items() if v}
    kinds = {k: stats(v) for k, v in times.items()}
    every = [ms for v in times.values() for ms in v]
    n_load = len(every)
    expected_turns = a.clients * (a.turns + 1)
    load = {
        "turns": n_load, "turns_planned": expected_turns, "errors": len(errors),
        "error_messages": errors[:5], "wall_s": wall, "turns_per_s": n_load / wall,
        "all": stats(every), "by_kind": kinds,
        "process_cpu_s": cpu, "cpu_ms_per_turn": cpu * 1e3 / max(n_load, 1),
        "client_processes_cpu_s": client_cpu,
        "rss_before_mb": rss0, "rss_after_mb": rss1, "rss_growth_mb": rss1 - rss0,
        "rss_peak_mb": peak, "rss_after_trim_mb": rss_trimmed,
        "rss_growth_after_trim_mb": None if rss_trimmed is None else rss_trimmed - rss0,
    }  # fmt: skip
    settings = dict(
        model=seg.name, device=str(seg.device), images=f"{N_IMAGES} phantom CTs 256 x 256",
        turns=a.turns, clients=a.clients, warmup=a.warmup, download_files=not a.no_download,
        client_tls_context_per_request=a.client_tls_context, client_processes=a.client_processes,
        server_concurrency=a.concurrency if kw else TURN_CONCURRENCY,
        model_worker=getattr(service, "worker", None) is not None, batch_wait_ms=a.batch_wait_ms,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), **cpu_info(),
        load_average_before=load_avg0, load_average_after=os.getloadavg(),
    )  # fmt: skip
    print(f"settings: {settings}")
    if rows:
        print(f"\n{'row':<22}{'n':>5}{'median ms':>12}{'p95 ms':>10}")
        for k, v in rows.items():
            print(f"{k:<22}{v['n']:>5}{v['median_ms']:>12.1f}{v['p95_ms']:>10.1f}")
    print(
        f"\nunder load: {n_load}/{expected_turns} turns, {a.clients} clients, {wall:.2f} s: "
        f"{load['turns_per_s']:.2f} turns/s, {len(errors)} errors, "
        f"{load['cpu_ms_per_turn']:.0f} ms CPU per turn in the server's process"
        + (f" (+{client_cpu * 1e3 / max(n_load, 1):.0f} ms in the clients')" if client_cpu else "")
    )
    print(f"{'kind':<12}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}")
    for k, v in [*kinds.items(), ("all", load["all"])]:
        print(f"{k:<12}{v['n']:>5}{v['median_ms']:>10.1f}{v['p95_ms']:>10.1f}")
    print(
        f"memory (RSS): {rss0:.0f} MB before the load, {rss1:.0f} MB after "
        f"({rss1 - rss0:+.0f} MB), peak {peak:.0f} MB"
        + ("" if rss_trimmed is None else f"; {rss_trimmed - rss0:+.0f} MB after malloc_trim")
    )
    for msg in load["error_messages"]:
        print(f"error: {msg}")
    result = {"settings": settings, "rows": rows, "load": load, "raw_ms": {**raw, **times}}
    if prof is not None:
        result["profile"] = prof.report(max(n_load, 1))
        result["thread_cpu_s"] = by_thread
        print(f"\n{'where (per turn under load)':<58}{'calls':>7}{'wall ms':>9}{'cpu ms':>8}")
        for name, r in result["profile"].items():
            print(
                f"{name:<58}{r['calls']:>7}{r['wall_ms_per_turn']:>9.1f}"
                f"{r['cpu_ms_per_turn']:>8.1f}"
            )
        print("\nCPU seconds during the load, by thread:")
        for name, s in result["thread_cpu_s"].items():
            print(f"  {name:<56}{s:>8.1f}")
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
