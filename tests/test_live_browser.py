"""The app's Live mode in a real headless Chromium whose fake microphone plays real Swedish.

Chromium's ``--use-file-for-fake-audio-capture`` plays a WAV joined from lexin-phrases clips
as the microphone; Whisper base streams it and confirmed Swedish words must appear, then the
Stop button gives SRT/VTT downloads; the page is saved as docs/live.png.
"""

from __future__ import annotations

import socket

import pytest
from test_app_browser import CHROMIUM, CHROMIUM_ARGS, DOCS
from test_live import joined_lexin

from whisper_sv.app.chat import AppOptions, ChatApp
from whisper_sv.core.text import normalize

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
    ),
]
CONFIRM_TIMEOUT_MS = 120_000  # model load and the first confirmations on 2 shared cores


@pytest.fixture(scope="module")
def driver():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_live_captions_from_a_fake_microphone(driver, tmp_path):
    speech = joined_lexin(tmp_path, seconds=20, seed=2)
    said = {w for w in normalize(speech.reference).split() if len(w) >= 4}
    fake_mic = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech.path}",
    ]
    options = AppOptions(runs_dir=None, port=free_port())
    chat = ChatApp(options)
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_mic)
    try:
        context = chromium.new_context(
            permissions=["microphone"], viewport={"width": 1100, "height": 1000}
        )
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{options.port}/")
        page.get_by_text("Live captions (microphone)").click()
        record = page.locator("#live-mic .record-button")
        record.wait_for(state="visible")
        page.wait_for_timeout(1_000)  # the microphone list is read when the panel opens
        record.click()
        # Confirmed Swedish lines appear while the microphone still records.
        page.wait_for_function(
            "() => document.querySelectorAll('#live-captions .live-line').length >= 2",
            timeout=CONFIRM_TIMEOUT_MS,
        )
        shown = page.locator("#live-captions").inner_text()
        assert said & set(normalize(shown).split()), (shown, said)
        page.locator("#live-mic .stop-button").click()
        page.locator("#live-downloads").wait_for(state="visible", timeout=CONFIRM_TIMEOUT_MS)
        downloads = page.locator("#live-downloads").inner_text().replace("\n", "")
        assert ".srt" in downloads and ".vtt" in downloads
        # The English of each line follows it.
        assert page.locator("#live-captions .live-en").count() >= 1
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "live.png"), full_page=True)
    finally:
        chromium.close()
        demo.close()
        chat.close()
