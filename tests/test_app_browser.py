"""The app in a real headless Chromium: upload, bad upload, link, and the screenshot.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped without it. Never run
``playwright install``: the tests drive the system browser through ``executable_path``.
The app runs in-process on a free port on 127.0.0.1; the fast tests use the tiny random
model (its words are noise), the slow one the bundled Whisper base and saves docs/app.png.
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf

from whisper_sv.app.chat import AppOptions, ChatApp
from whisper_sv.infer import links

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT_MS = 120_000  # one request on 2 shared cores, first model load included

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _speak(path: Path, text: str, voice: str = "sv+m3") -> Path:
    from whisper_sv.data.sources import espeak

    pcm, rate = espeak.synthesize(text, voice=voice, rate=150)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return path


class _Quiet(SimpleHTTPRequestHandler):
    """Serves the folder; /slow.wav sends one byte a second for an hour (no read times out)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/slow.wav":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(1_000_000))
        self.end_headers()
        try:
            for _ in range(3_600):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(1)
        except OSError:  # the client went away
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder with a spoken Swedish clip and a corrupt one, served over local HTTP."""
    root = tmp_path_factory.mktemp("media")
    _speak(root / "stockholm.wav", "Stockholm är Sveriges huvudstad och ligger vid Mälaren.")
    (root / "trasig.mp3").write_bytes(b"ID3" + bytes(range(256)) * 16)  # mp3 tag, no frames
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # one per thread: a second one would refuse to start
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


def _serve(options: AppOptions):
    chat = ChatApp(options)
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    return chat, demo, f"http://127.0.0.1:{options.port}/"


@pytest.fixture(scope="module")
def tiny_url(tiny_ct2_dir, media):
    _, host = media
    options = AppOptions(
        model=str(tiny_ct2_dir),
        runs_dir=None,
        port=_free_port(),
        link_hosts=(*links.YOUTUBE_HOSTS, host),  # the widened allow-list
    )
    chat, demo, url = _serve(options)
    yield url
    demo.close()
    chat.close()


@pytest.fixture
def page(browser, tiny_url):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(tiny_url)
    page.wait_for_selector("#input textarea")
    yield page
    context.close()


def input_ready(page, timeout_ms: float = TIMEOUT_MS) -> None:
    """Wait until the input box takes a message: no status tracker covers it (a job of this
    page still running or queued shows one, and a failed job leaves it on "Error")."""
    try:
        page.wait_for_function(
            """() => {
                const t = document.querySelector('#input [data-testid=status-tracker]');
                return !t || t.classList.contains('hide');
            }""",
            timeout=timeout_ms,
        )
    except Exception as err:
        tracker = page.locator("#input [data-testid=status-tracker]")
        shown = tracker.evaluate("t => `${t.className}: ${t.innerText}`")
        raise AssertionError(
            f"the input box still took no message after {timeout_ms / 1000:.0f} s; its status "
            f"tracker shows {shown!r} (a job still running, or one that ended in an error)"
        ) from err


def send_file(page, path: Path) -> None:
    """Attach ``path`` in the input box and send it, once the box takes a message."""
    input_ready(page)
    page.locator("#input input[type=file]").set_input_files(str(path))
    page.locator('#input [aria-label="File thumbnail"]').wait_for(timeout=TIMEOUT_MS)
    page.locator("#input [data-testid=submit-button]").click()


def send_text(page, text: str) -> None:
    """Type ``text`` in the input box and send it, once the box takes a message (a reply can
    show its last text while its job is still ending; Enter is ignored until then)."""
    input_ready(page)
    page.locator("#input textarea").fill(text)
    page.locator("#input textarea").press("Enter")


def reply_text(page, n: int = 1) -> str:
    """The text of the ``n``-th bot reply once it is complete (no progress line left)."""
    bot = page.locator("#chat [data-testid=bot]").nth(n - 1)
    bot.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        """([n]) => {
            const bots = document.querySelectorAll('#chat [data-testid=bot]');
            const t = bots.length >= n ? bots[n - 1].innerText : '';
            return t && !t.includes('⏳') && (t.includes(' · ') || t.includes('⚠️'));
        }""",
        arg=[n],
        timeout=TIMEOUT_MS,
    )
    return bot.inner_text()


def test_upload_shows_transcript_translation_and_downloads(page, media, tiny_ct2_dir):
    root, _ = media
    assert not page.locator("#downloads").is_visible()  # no empty panel before a reply
    send_file(page, root / "stockholm.wav")
    text = reply_text(page)
    model = f"model {tiny_ct2_dir.name}"
    assert f"Svenska · stockholm.wav · 3.6 s · {model}" in text
    assert f"English · Whisper (offline) · {model}" in text
    assert "⚠️" not in text
    assert "No speech found" not in text  # the seeded tiny model always says something
    page.locator("#downloads").wait_for(state="visible")
    downloads = page.locator("#downloads").inner_text().replace("\n", "")
    for name in ("stockholm.srt", "stockholm.vtt", "stockholm.txt"):
        assert name in downloads
    assert "stockholm.en.srt" in downloads and "stockholm.en.vtt" in downloads
    assert not page.locator("#cancel").is_visible()  # only while a job runs


def pick(page, elem_id: str, label: str) -> None:
    """Choose ``label`` in the dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.wait_for_function(
        "([id, v]) => document.querySelector(`#${id} input`).value === v",
        arg=[elem_id, label],
    )


def test_language_and_quality_choices(page, media):
    root, _ = media
    assert page.locator("#language input").input_value() == "Svenska"  # the default
    assert page.locator("#quality input").input_value() == "Fast (greedy)"
    pick(page, "language", "Norsk")
    pick(page, "quality", "Accurate (beam 5, about 1.6x slower)")
    send_file(page, root / "stockholm.wav")
    text = reply_text(page)
    assert "Norsk · stockholm.wav · 3.6 s · model" in text and "(accurate)" in text


@pytest.mark.parametrize("typed", ["", "   "])
def test_empty_submit_answers_with_help_and_the_page_keeps_working(page, media, typed):
    root, _ = media
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.locator("#input textarea").fill(typed)
    page.locator("#input textarea").press("Enter")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat [data-testid=bot]')]"
        ".some(b => b.innerText.includes('YouTube link'))",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(500)
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert errors == []
    send_file(page, root / "stockholm.wav")  # buttons still work
    assert "Svenska · stockholm.wav" in reply_text(page, 2)


def test_cancel_stops_a_long_job(page, media):
    """A link that sends one byte a second, cancelled: the page takes the next job within 2 s
    of Cancel, and answers it."""
    root, host = media
    send_text(page, f"http://{host}/slow.wav")
    page.locator("#cancel").wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#chat [data-testid=bot]')?.innerText.includes('Downloading')",
        timeout=TIMEOUT_MS,
    )
    page.locator("#cancel").click()
    start = time.monotonic()
    # The job ends itself (its download is stopped within 0.2 s): its last message is the
    # cancelled reply, the Cancel button goes and the input box takes a message again.
    page.locator("#cancel").wait_for(state="hidden", timeout=TIMEOUT_MS)
    input_ready(page)
    took = time.monotonic() - start
    text = page.locator("#chat [data-testid=bot]").first.inner_text()
    assert "Cancelled" in text and "Downloading" not in text, text
    assert took < 2, f"the page took the next job {took:.1f} s after Cancel (the bound is 2 s)"
    send_file(page, root / "stockholm.wav")  # and the app answers the next job
    assert "Svenska · stockholm.wav" in reply_text(page, 2)


def test_corrupt_upload_shows_a_readable_message(page, media):
    root, _ = media
    send_file(page, root / "trasig.mp3")
    text = reply_text(page)
    assert "⚠️" in text and "Could not read trasig.mp3" in text and "corrupt" in text
    assert "Traceback" not in page.content()
    # The app is still usable afterwards.
    send_file(page, root / "stockholm.wav")
    assert "Svenska" in reply_text(page, 2)


def test_link_on_the_allow_list(page, media):
    _, host = media
    send_text(page, f"http://{host}/stockholm.wav")
    text = reply_text(page)
    assert "Svenska · stockholm · 3.6 s" in text
    send_text(page, "https://example.com/talk.mp3")
    text = reply_text(page, 2)
    assert "Could not use the link: links to example.com are not accepted" in text


def test_microphone_recording(playwright, tiny_url, tmp_path):
    """Chromium's fake microphone plays Swedish speech; the recording is sent like a file."""
    speech = _speak(tmp_path / "mic.wav", "Vi ses i morgon på jobbet.")
    fake_mic = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
    ]
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_mic)
    try:
        page = chromium.new_context(permissions=["microphone"]).new_page()
        page.goto(tiny_url)
        page.locator("#input [data-testid=microphone-button]").click()
        page.locator("#input .record-button").click()
        page.wait_for_timeout(2500)
        page.locator("#input .stop-button").click()
        page.locator('#input [aria-label="Attach audio"]').click()
        page.locator('#input [aria-label="File thumbnail"]').wait_for(timeout=TIMEOUT_MS)
        page.locator("#input [data-testid=submit-button]").click()
        text = reply_text(page)
    finally:
        chromium.close()
    assert re.search(r"Svenska · audio\.wav · [2-4]\.\d s", text)
    assert "⚠️" not in text


@pytest.mark.slow
def test_bundled_model_real_transcript_screenshot(browser, sv_words_dir, cv_sentence, tmp_path):
    """Whisper base in the browser on two real recordings, a word and a sentence -> docs/app.png.

    The sentence is a real voice: Whisper base's English of espeak's voice is mostly a YouTube
    outro ("See you next time!"), which the speech guard drops, leaving no English to show.
    """
    import shutil

    sentence = shutil.copy(cv_sentence, tmp_path / "orolig.mp3")
    options = AppOptions(runs_dir=None, port=_free_port())
    chat, demo, url = _serve(options)
    context = browser.new_context(viewport={"width": 1100, "height": 1150})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#input textarea")
        send_file(page, sv_words_dir / "clothes__knitted_sweater.mp3")  # "stickad tröja"
        first = reply_text(page)
        assert "Stickad tröja" in first
        send_file(page, sentence)
        second = reply_text(page, 2)
        assert "lika viktigt, men du behöver den här" in second
        assert second.count("English · Whisper (offline) · model bundled:base") == 1
        assert "but you need this" in second and "Left out" not in second
        downloads = page.locator("#downloads").inner_text().replace("\n", "")
        assert "orolig.srt" in downloads and "orolig.en.vtt" in downloads
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "app.png"), full_page=True)
    finally:
        context.close()
        demo.close()
        chat.close()
