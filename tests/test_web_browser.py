"""The page in a real browser (headless Chromium driven by Playwright) against `python -m seedvr.web --local`'s
app with the real in-process worker on the tiny fixture models (tests/tiny.py): pick a file, watch the
progress, see the result next to the input, download it; a bad file shows the worker's own error. The server
has an access token: a browser without it is refused, one that opened `/?token=...` is served.

One server and one browser for the module. Skipped when Chromium (Debian's `chromium` package) or the
`playwright` package is missing. With SEEDVR_WEB_SCREENSHOT=path the image test saves a screenshot there.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from mediagen import make_image, make_video
from tiny import write_tiny_setup
from worker_helpers import free_port

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = os.environ.get("SEEDVR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium not found (apt-get install -y chromium, or set SEEDVR_CHROMIUM)", allow_module_level=True)

from seedvr.media import probe  # noqa: E402 - after the skips: the module needs the browser first
from seedvr.web import InProcessBackend, WebSettings, create_app  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UPLOAD_LIMIT = 2_000_000
TOKEN = "browser-test-access-token"
RESULT_TIMEOUT_MS = 180_000
pytestmark = pytest.mark.slow
# Page scripts run under the app's CSP (no eval), so wait_for_function gets functions, not expressions.
# Records every text the progress line shows, so a test can check what appeared between two of its looks.
RECORD_STAGES = """
window.__stages = [];
document.addEventListener("DOMContentLoaded", () => {
  const stage = document.getElementById("stage");
  new MutationObserver(() => window.__stages.push(stage.textContent)).observe(stage, {childList: true, characterData: true, subtree: true});
});
"""


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("web_media")
    bad = root / "broken.mp4"
    bad.write_bytes(b"this is not a video at all" * 20)
    return {
        "video": make_video(root / "clip.mp4", frames=21, width=64, height=48),  # long enough (~2 s) for polls to see progress
        "image": make_image(root / "photo.png", width=64, height=48),
        "bad": bad,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The web app with the in-process worker on the tiny models, served by uvicorn on a free port."""
    import uvicorn

    config_dir, ckpt_dir = write_tiny_setup(tmp_path_factory.mktemp("web_tiny"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEEDVR_CKPT_DIR", str(ckpt_dir))
        env.setenv("SEEDVR_CONFIG_DIR", str(config_dir))
        env.setenv("PROGRESS_INTERVAL", "0.05")
        backend = InProcessBackend()
    app = create_app(backend, WebSettings(max_upload_bytes=UPLOAD_LIMIT, result_ttl=600, access_token=TOKEN), "local")
    port = free_port()
    uvi = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvi.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvi.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    uvi.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def open_page(browser, server):
    """A fresh browser context (its own cookies, so its own session) at the given viewport."""
    contexts = []

    def opener(width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(RECORD_STAGES)
        page.goto(f"{server}?token={TOKEN}")
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield opener
    for context in contexts:
        context.close()


def restore(page, path: Path, scale: str = "1.5") -> None:
    """Pick `path`, ask for a small scale factor (the tiny models run on the CPU), press Restore."""
    page.set_input_files("#file", str(path))
    page.select_option("#size", "scale")
    page.fill("#scale", scale)
    page.fill("#seed", "42")
    page.click("#restore")


def download(page, tmp_path: Path) -> Path:
    with page.expect_download() as info:
        page.click("#download")
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return target


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_video_restore_shows_progress_and_synchronised_result(open_page, media, tmp_path):
    page = open_page()
    restore(page, media["video"])
    page.wait_for_selector("#result:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    stages = page.evaluate("window.__stages")
    assert any("window 1 of 1" in text and "%" in text for text in stages), "\n".join(stages)
    assert page.text_content("#error") == "" and page.is_hidden("#error")
    assert page.is_visible("#compare-video") and page.is_hidden("#compare-image")

    page.wait_for_function("() => [...document.querySelectorAll('video')].every(v => v.readyState >= 1)", timeout=30_000)
    sizes = page.evaluate("[...document.querySelectorAll('video')].map(v => [v.videoWidth, v.videoHeight])")
    assert sizes == [[64, 48], [96, 72]]  # input, restored
    page.evaluate("document.getElementById('after-video').currentTime = 0.12")
    page.wait_for_function("() => Math.abs(document.getElementById('before-video').currentTime - 0.12) < 0.01")
    summary = page.text_content("#summary")
    assert "64x48 → 96x72" in summary and "21 frames" in summary and "seed 42" in summary

    saved = download(page, tmp_path)
    assert saved.name == "clip_seedvr2_96x72.mp4"
    info = probe(saved)
    assert (info.kind, info.width, info.height, info.frames) == ("video", 96, 72, 21)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: input above result, nothing sideways
    before, after = (page.locator(f"#{name}-video").bounding_box() for name in ("before", "after"))
    assert after["y"] > before["y"] + before["height"] - 1 and after["width"] <= 390
    assert no_horizontal_scroll(page)


def test_image_restore_with_before_after_slider(open_page, media, tmp_path):
    page = open_page()
    restore(page, media["image"], scale="2")
    page.wait_for_selector("#result:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    assert page.is_visible("#compare-image") and page.is_hidden("#compare-video")
    page.wait_for_function("() => document.getElementById('after-image').naturalWidth > 0")
    assert page.evaluate("document.getElementById('after-image').naturalWidth") == 128
    page.locator("#split").fill("20")
    assert page.evaluate("getComputedStyle(document.getElementById('compare-image')).getPropertyValue('--split')") == "20%"
    clip = page.evaluate("getComputedStyle(document.getElementById('before-image')).clipPath")
    assert clip.startswith("inset(0px 80%") or "80%" in clip, clip

    saved = download(page, tmp_path)
    info = probe(saved)
    assert (saved.suffix, info.kind, info.width, info.height) == (".png", "image", 128, 96)

    screenshot = os.environ.get("SEEDVR_WEB_SCREENSHOT")
    if screenshot:
        page.locator("#split").fill("50")
        page.wait_for_timeout(600)  # let the progress bar's width transition end
        page.screenshot(path=screenshot, full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(Path(screenshot).with_suffix(".phone.png")), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_scroll(page)


def test_bad_file_shows_the_workers_error(open_page, media):
    page = open_page(390, 844)
    restore(page, media["bad"])
    page.wait_for_selector("#error:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    error = page.text_content("#error")
    assert error.startswith("Unsupported media:") and error.endswith("(UNSUPPORTED_MEDIA)"), error
    assert page.is_hidden("#result")
    assert page.is_enabled("#restore")  # ready for another try


def test_oversized_file_is_refused_before_upload(open_page):
    page = open_page()
    uploads = []
    page.on("request", lambda request: uploads.append(request.url) if request.method == "POST" else None)
    page.set_input_files("#file", {"name": "huge.mp4", "mimeType": "video/mp4", "buffer": b"\0" * (UPLOAD_LIMIT + 1)})
    error = page.text_content("#error")
    assert "huge.mp4 is 2.0 MB; this server accepts at most 2.0 MB" in error and "TOO_LARGE" in error
    assert page.is_disabled("#restore") and uploads == []


def test_without_the_token_the_page_is_refused_and_with_it_a_job_runs(browser, server, media):
    context = browser.new_context()
    try:
        page = context.new_page()
        refused = page.goto(server)
        assert refused.status == 401 and "needs its access token" in page.text_content("body")
        api = page.evaluate("async () => (await fetch('/api/jobs?name=x.png', {method: 'POST', body: 'x'})).status")
        assert api == 401
        page.goto(f"{server}?token={TOKEN}")
        assert page.url == server  # the token left the address bar; a cookie holds it now
        page.wait_for_selector("body[data-ready=true]")
        restore(page, media["image"], scale="1")
        page.wait_for_selector("#result:not([hidden])", timeout=RESULT_TIMEOUT_MS)
        assert page.is_hidden("#error")
    finally:
        context.close()
