"""End to end in a real browser: upload a phantom CT, ask for the hepatic lesion, see the answer.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``; playwright's own
browser download is never used). Uses the trained default model when its weights are present
(and then refreshes docs/app_screenshot.png), else the tiny random model at threshold 0.
"""

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "app_screenshot.png"
DEFAULT_WEIGHTS = REPO / "vlseg" / "weights" / "phantom-tiny" / "model.safetensors"

pytestmark = [
    pytest.mark.slow,
    # gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found: install it with `apt-get install -y chromium` "
        "(make browser)",
    ),
]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lesion_ct(path: Path, size: int = 256) -> Path:
    """A CT phantom that contains a hepatic lesion, as a PNG."""
    from PIL import Image

    from vlseg.data.phantoms import generate_sample

    for index in range(50):
        s = generate_sample(seed=7, index=index, modality="ct", size=size)
        if s.label == "hepatic lesion":
            Image.fromarray(s.image).save(path)
            return path
    raise AssertionError("no CT phantom with a hepatic lesion in the first 50")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model):
    pytest.importorskip("gradio")
    from app import serve
    from vlseg.predictor import Segmenter, load

    trained = DEFAULT_WEIGHTS.exists()
    seg = load() if trained else Segmenter(tiny_model, image_size=64, threshold=0.0)
    port = _free_port()
    demo = serve(seg, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/", trained
    demo.close()
    demo.vlseg_service.close()


def test_upload_ask_and_see_overlay_and_area(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, trained = app_url
    ct = _lesion_ct(tmp_path / "ct_phantom.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("#message textarea", timeout=60_000)
            assert "Research use only" in page.inner_text("#notice")
            page.set_input_files("#message input[type=file]", str(ct))
            page.wait_for_selector("#message img", timeout=30_000)  # upload preview
            page.fill("#message textarea", "segment the hepatic lesion")
            page.press("#message textarea", "Enter")
            bot = page.locator("#chat .message.bot, #chat [data-testid='bot']").last
            bot.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => /area [0-9,]+ px|not found/.test(document.querySelector('#chat').innerText)",
                timeout=60_000,
            )
            text = page.inner_text("#chat")
            assert re.search(r"the hepatic lesion\S*: area [\d,]+ px", text), text[-500:]
            page.wait_for_selector("#chat img[src*='overlay']", timeout=30_000)
            page.wait_for_selector("#view img", timeout=30_000)  # the annotated view
            assert page.locator("#masks a, #masks [download]").count() >= 1
            shot = tmp_path / "app_screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            # a follow-up: earlier images come as references now, and still show
            page.fill("#message textarea", "the liver")
            page.press("#message textarea", "Enter")
            page.wait_for_function(
                "() => document.querySelectorAll(\"#chat img[src*='overlay']\").length >= 2",
                timeout=60_000,
            )
            page.wait_for_function(
                "() => [...document.querySelectorAll('#chat img, #view img')]"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            assert page.locator("#chat img").count() >= 3  # the upload and two overlays
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    # docs show the real default model, never the random test model; refreshed on request only
    if trained and os.environ.get("VLSEG_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_example_runs_in_one_click(app_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = app_url
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text("is it a melanoma or a nevus?").first.click(timeout=60_000)
            page.wait_for_function(
                "() => /Most likely/.test(document.querySelector('#chat').innerText)",
                timeout=60_000,
            )
        finally:
            browser.close()
