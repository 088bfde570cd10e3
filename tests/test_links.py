"""Links: the host allow-list, yt-dlp downloads from a local HTTP server, and the messages."""

from __future__ import annotations

import functools
import socket
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.infer import links
from whisper_sv.infer.links import LinkError, LinkOptions


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
    "entry", ["youtube.com", "127.0.0.1:8000", "[::1]:8000", "::1", "localhost", "media.lan."]
)
def test_host_entries_are_accepted(entry):
    assert LinkOptions(allowed_hosts=(entry,)).allowed_hosts == (entry,)


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("http://evil/x", "not a host name"),
        ("evil.example/x", "not a host name"),
        ("two words", "not a host name"),
        ("", "not a host name"),
        ("host:99999", "port must be 1-65535"),
        ("[::1]:x", "port must be 1-65535"),
    ],
)
def test_urls_and_paths_are_not_host_entries(entry, said):
    with pytest.raises(ValueError, match=said):
        LinkOptions(allowed_hosts=(entry,))


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
    assert expected in links.explain_ytdlp_error(message, "https://www.youtube.com/watch?v=abc")


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
        links.check_info({"id": "x", "duration": 3_601}, options)
    with pytest.raises(LinkError, match="playlist"):
        links.check_info({"_type": "playlist", "entries": []}, options)
    with pytest.raises(LinkError, match="live"):
        links.check_info({"id": "x", "is_live": True}, options)
    links.check_info({"id": "x", "duration": 59}, options)  # fine: no exception


def test_disallowed_link_never_reaches_the_network(media_server):
    # Same server, but not on the list: refused before any request is made.
    with pytest.raises(LinkError, match="not accepted"):
        links.fetch_audio(f"http://{media_server}/tone.wav", LinkOptions())


def test_no_stray_files_in_the_real_temp_dir(local, media_server):
    before = set(Path(tempfile.gettempdir()).glob("whisper-sv-link-*"))
    links.fetch_audio(f"http://{media_server}/tone.wav", local)
    assert set(Path(tempfile.gettempdir()).glob("whisper-sv-link-*")) == before


# --------------------------------------------------------------------------- redirects, addresses


class _Counting(SimpleHTTPRequestHandler):
    """Serves a folder; "/to?url" answers 302 to url; counts every request it gets."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def two_servers(tmp_path):
    """Two local servers with the same tone: "allowed" and "other" (never on the list)."""
    t = np.arange(16_000) / 16_000
    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    servers = {}
    for name in ("allowed", "other"):
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Counting, directory=str(tmp_path))
        )
        server.hits = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {k: (f"127.0.0.1:{v.server_address[1]}", v.hits) for k, v in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def test_redirects_inside_the_allow_list_are_followed(two_servers):
    allowed, hits = two_servers["allowed"]
    options = LinkOptions(allowed_hosts=(allowed,), timeout_s=5)
    url = f"http://{allowed}/to?/to?/tone.wav"  # two hops, both on the allowed server
    got = links.fetch_audio(url, options)
    assert got.duration == pytest.approx(1.0, abs=0.05)
    assert hits == ["/to?/to?/tone.wav", "/to?/tone.wav", "/tone.wav"]


@pytest.mark.parametrize(
    "target",
    [
        "http://{other}/latest/meta-data/",  # another port of the same address
        "http://localhost:{other_port}/tone.wav",  # a name for 127.0.0.1, not on the list
        "/to?http://{other}/tone.wav",  # the bad hop comes second
    ],
)
def test_a_redirect_to_a_host_off_the_list_never_reaches_it(two_servers, target):
    allowed, allowed_hits = two_servers["allowed"]
    other, other_hits = two_servers["other"]
    options = LinkOptions(allowed_hosts=(allowed,), timeout_s=5)
    target = target.format(other=other, other_port=other.rsplit(":", 1)[1])
    with pytest.raises(LinkError, match="redirects elsewhere: links to .* are not accepted"):
        links.fetch_audio(f"http://{allowed}/to?{target}", options)
    assert other_hits == []  # zero requests reached the server that is not allowed
    assert allowed_hits  # while the allowed one was asked


def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed(two_servers, monkeypatch):
    other, hits = two_servers["other"]
    port = other.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/tone.wav"
    options = LinkOptions(allowed_hosts=(f"localhost:{port}",), timeout_s=5)
    with pytest.raises(LinkError, match="private or local address"):
        links.fetch_audio(url, options)
    assert hits == []
    monkeypatch.setenv(links.PRIVATE_ENV, "1")  # the explicit opt-in
    assert links.fetch_audio(url, options).duration == pytest.approx(1.0, abs=0.05)
    assert hits == ["/tone.wav"]


def test_address_rules():
    options = LinkOptions(allowed_hosts=("127.0.0.1:8000", "lan.example"))
    assert options.address_allowed("example.org", "93.184.215.14")
    assert options.address_allowed("127.0.0.1", "127.0.0.1")  # named on the list itself
    for host, address in [
        ("lan.example", "192.168.1.10"),
        ("lan.example", "169.254.169.254"),  # cloud metadata (link-local)
        ("lan.example", "::1"),
        ("lan.example", "10.0.0.1"),
        ("localhost", "127.0.0.1"),
    ]:
        assert not options.address_allowed(host, address), address
    assert LinkOptions(allow_private=True).address_allowed("lan.example", "192.168.1.10")


def test_redirect_loops_stop(two_servers):
    allowed, hits = two_servers["allowed"]
    url = f"http://{allowed}/to?" * 8 + "/tone.wav"
    with pytest.raises(LinkError, match="too many redirects"):
        links.fetch_audio(url, LinkOptions(allowed_hosts=(allowed,), timeout_s=5))
    assert len(hits) == links.MAX_REDIRECTS + 1


def test_yt_dlp_runs_youtube_extractors_only(two_servers, tmp_path):
    # Handed a non-YouTube link directly, yt-dlp has no extractor for it and asks nobody.
    other, hits = two_servers["other"]
    with pytest.raises(LinkError, match="no audio or video found"):
        links.download_link(f"http://{other}/tone.wav", tmp_path, LinkOptions(), None)
    assert hits == []


# --------------------------------------------------------------------------- slow links


def _fetch_in_thread(url: str, options: LinkOptions, cancel: threading.Event | None = None):
    """fetch_audio in a thread; (thread, dict with "error" or "audio" once it ends)."""
    done: dict = {}

    def work() -> None:
        try:
            done["audio"] = links.fetch_audio(url, options, cancel=cancel)
        except LinkError as err:
            done["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, done


def test_a_cancelled_download_of_a_one_byte_a_second_link_stops_at_once(trickle):
    options = LinkOptions(allowed_hosts=(trickle.host,), timeout_s=20)
    cancel = threading.Event()
    thread, done = _fetch_in_thread(f"http://{trickle.host}/slow.wav", options, cancel)
    assert trickle.started.wait(60), "the download never reached the local server"
    start = time.monotonic()
    cancel.set()
    thread.join(10)
    took = time.monotonic() - start
    # The watch polls every CANCEL_POLL_S (0.2 s); 2 s leaves room for a loaded CPU.
    assert not thread.is_alive(), "the download went on 10 s after its cancel event was set"
    assert took < 2, f"the download stopped {took:.1f} s after cancel (the bound is 2 s)"
    assert isinstance(done.get("error"), links.DownloadCancelled), done
    assert trickle.gone.wait(10), "the server kept its connection: the socket was not closed"


def test_a_link_that_sends_one_byte_a_second_is_stopped_by_the_total_deadline(trickle):
    # Each read gets a byte within its 20 s timeout, so only the total deadline stops it.
    options = LinkOptions(allowed_hosts=(trickle.host,), timeout_s=20, deadline_s=2)
    start = time.monotonic()
    thread, done = _fetch_in_thread(f"http://{trickle.host}/slow.wav", options)
    thread.join(30)
    took = time.monotonic() - start
    assert not thread.is_alive(), "the download was still running 30 s into a 2 s deadline"
    assert "took longer than 2 s" in str(done.get("error")), done
    assert took < 2 + 10, f"a 2 s deadline ended the download after {took:.1f} s"
