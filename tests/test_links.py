"""Links: the host allow-list, yt-dlp downloads from a local HTTP server, and the messages."""

from __future__ import annotations

import functools
import socket
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_sv import links
from whisper_sv.links import LinkError, LinkOptions


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    """A local http.server with a 2 s tone (tone.wav), a text file and an empty file."""
    root = tmp_path_factory.mktemp("media")
    t = np.arange(2 * 16_000) / 16_000
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    (root / "notes.mp3").write_text("these are not sounds\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def local(media_server):
    """Options that allow the local server (and nothing but YouTube besides)."""
    return LinkOptions(allowed_hosts=(*links.YOUTUBE_HOSTS, media_server), timeout_s=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- allow-list


@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://youtu.be/dQw4w9WgXcQ",
        "youtube.com/watch?v=dQw4w9WgXcQ",
        "https://m.youtube.com/watch?v=dQw4w9WgXcQ",
        "HTTPS://WWW.YOUTUBE.COM/shorts/abc",
    ],
)
def test_youtube_links_are_accepted(url):
    assert links.check_link(url).lower().startswith("https://")


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://example.com/talk.mp3", "links to example.com are not accepted"),
        ("https://youtube.com.evil.org/watch?v=x", "not accepted"),
        ("http://127.0.0.1:8000/clip.wav", "links to 127.0.0.1:8000 are not accepted"),
        ("ftp://youtube.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("", "empty link"),
        ("https://:80/", "not a valid link"),
    ],
)
def test_other_links_are_refused_with_a_reason(url, reason):
    with pytest.raises(LinkError, match=reason):
        links.check_link(url)


def test_allow_list_widens_by_option_and_environment(monkeypatch):
    url = "http://127.0.0.1:8000/clip.wav"
    assert links.check_link(url, LinkOptions(allowed_hosts=("127.0.0.1:8000",))) == url
    assert links.check_link(url, LinkOptions(allowed_hosts=("127.0.0.1",))) == url  # any port
    with pytest.raises(LinkError):
        links.check_link(url, LinkOptions(allowed_hosts=("127.0.0.1:9000",)))
    monkeypatch.setenv(links.HOSTS_ENV, " localhost , 127.0.0.1:8000")
    assert links.check_link(url) == url
    assert "youtu.be" in LinkOptions().hosts()


def test_options_are_validated():
    with pytest.raises(ValueError, match="tuple"):
        LinkOptions(allowed_hosts="youtube.com")
    with pytest.raises(ValueError, match="> 0"):
        LinkOptions(max_bytes=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("https://www.youtube.com/watch?v=x", True),
        ("http://127.0.0.1:8000/a.wav", True),
        ("youtu.be/abc", True),
        ("www.youtube.com/watch?v=x", True),
        ("hej hur mår du", False),
        ("hej", False),
        ("", False),
        ("example.com/a", False),
    ],
)
def test_looks_like_link(text, expected):
    assert links.looks_like_link(text) is expected


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            "ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video",
            "private",
        ),
        ("ERROR: [youtube] abc: Video unavailable. This video has been removed", "unavailable"),
        ("ERROR: [youtube] abc: Sign in to confirm your age", "age-restricted"),
        (
            "ERROR: [youtube] abc: Unable to download webpage: Failed to resolve 'www.youtube.com'",
            "cannot reach www.youtube.com",
        ),
        ("ERROR: [youtube:truncated_id] abc: Incomplete YouTube ID abc", "not a valid video link"),
        ("ERROR: Unsupported URL: https://youtube.com/about", "no audio or video"),
        ("ERROR: [youtube] x: Something new went wrong", "the download failed: Something new"),
    ],
)
def test_yt_dlp_errors_become_sentences(message, expected):
    assert expected in links._explain(message, "https://www.youtube.com/watch?v=abc")


# --------------------------------------------------------------------------- downloads


def test_direct_media_link_downloads_and_decodes(local, media_server, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see what is left behind
    seen: list[float] = []
    got = links.fetch_audio(f"http://{media_server}/tone.wav", local, on_progress=seen.append)
    assert got.audio.dtype == np.float32 and got.audio.ndim == 1
    assert got.duration == pytest.approx(2.0, abs=0.05)
    assert got.title == "tone"
    assert 0.25 < float(np.abs(got.audio).max()) < 0.35  # the tone itself, not silence
    assert seen and seen[-1] == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == []  # the download folder is gone


def test_failures_clean_up_too(local, media_server, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(LinkError, match="not usable audio: not audio"):
        links.fetch_audio(f"http://{media_server}/notes.mp3", local)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path, reason",
    [
        ("missing.wav", "HTTP 404"),
        ("", "no audio or video found"),  # the folder listing is a web page, not media
    ],
)
def test_bad_links_on_a_live_server(local, media_server, path, reason):
    with pytest.raises(LinkError, match=reason):
        links.fetch_audio(f"http://{media_server}/{path}", local)


def test_unreachable_host_is_reported():
    port = _free_port()
    options = LinkOptions(allowed_hosts=(f"127.0.0.1:{port}",), timeout_s=3)
    with pytest.raises(LinkError, match="cannot reach 127.0.0.1"):
        links.fetch_audio(f"http://127.0.0.1:{port}/clip.wav", options)


def test_size_and_length_limits(media_server):
    hosts = (media_server,)
    with pytest.raises(LinkError, match="larger than the limit of 1 kB"):
        links.fetch_audio(
            f"http://{media_server}/tone.wav", LinkOptions(allowed_hosts=hosts, max_bytes=1024)
        )
    with pytest.raises(LinkError, match=r"too long \(0:02\); the limit is 0:01"):
        links.fetch_audio(
            f"http://{media_server}/tone.wav", LinkOptions(allowed_hosts=hosts, max_duration_s=1)
        )


def test_length_known_up_front_is_refused_before_download():
    options = LinkOptions(max_duration_s=60)
    with pytest.raises(LinkError, match="too long"):
        links._check_info({"id": "x", "duration": 3_601}, options)
    with pytest.raises(LinkError, match="playlist"):
        links._check_info({"_type": "playlist", "entries": []}, options)
    with pytest.raises(LinkError, match="live"):
        links._check_info({"id": "x", "is_live": True}, options)
    links._check_info({"id": "x", "duration": 59}, options)  # fine: no exception


def test_disallowed_link_never_reaches_the_network(media_server):
    # Same server, but not on the list: refused before any request is made.
    with pytest.raises(LinkError, match="not accepted"):
        links.fetch_audio(f"http://{media_server}/tone.wav", LinkOptions())


def test_no_stray_files_in_the_real_temp_dir(local, media_server):
    before = set(Path(tempfile.gettempdir()).glob("whisper-sv-link-*"))
    links.fetch_audio(f"http://{media_server}/tone.wav", local)
    assert set(Path(tempfile.gettempdir()).glob("whisper-sv-link-*")) == before
