"""Audio from a link: yt-dlp (as a library, no shell) for YouTube, a checked HTTP client for
direct media links.

Only YouTube links are accepted by default, and yt-dlp runs with its YouTube extractors only
(never the generic one, which follows links anywhere). Other hosts are added with
``LinkOptions(allowed_hosts=...)`` or the environment variable ``WHISPER_SV_LINK_HOSTS``
(comma-separated, e.g. ``127.0.0.1:8000`` for a local test server; a host without a port
allows every port); on those hosts a link must point at a media file, which is fetched by
:func:`_direct_download`: every redirect hop is checked against the allow-list again, and
every address a host name resolves to is checked before connecting (private, loopback,
link-local and other non-public addresses are refused unless allowed, see
:meth:`LinkOptions.address_allowed`). The connection goes to the address that was checked, so
a second DNS answer cannot swap it.

Only the audio is fetched, into a temporary folder that is removed before :func:`fetch_audio`
returns. ``timeout_s`` bounds each network read and ``deadline_s`` the whole download: a link
that sends one byte a second never times out a read, so only a total deadline frees the
worker. A ``cancel`` event stops a download within :data:`CANCEL_POLL_S`. Length and size are checked before the download where the site says them, and again
after it. Every failure is a :class:`LinkError` whose message can be shown to the user as it is.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np

from whisper_sv.core.audio import AudioError, duration_s, load_audio

log = logging.getLogger(__name__)

YOUTUBE_HOSTS: tuple[str, ...] = (
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
)
HOSTS_ENV = "WHISPER_SV_LINK_HOSTS"  # extra allowed hosts, comma-separated
PRIVATE_ENV = "WHISPER_SV_LINK_PRIVATE"  # "1": private/loopback addresses allowed too
# yt-dlp extractors that may run (regexes on extractor names): YouTube's, never "generic".
YOUTUBE_EXTRACTORS: tuple[str, ...] = (r"youtube(:.*)?",)
MAX_REDIRECTS = 5  # hops followed on direct media links, each one checked
CANCEL_POLL_S = 0.2  # a cancelled or overdue download is stopped within this many seconds


@dataclass(frozen=True)
class LinkOptions:
    """What links are accepted and how much is downloaded."""

    allowed_hosts: tuple[str, ...] = (
        YOUTUBE_HOSTS  # "host" (any port) or "host:port"; + $WHISPER_SV_LINK_HOSTS
    )
    max_duration_s: float = 3_600.0  # longer recordings are refused (before download if known)
    max_bytes: int = 200 * 1024 * 1024  # larger downloads are refused / aborted
    timeout_s: float = 20.0  # network timeout of each request, seconds
    deadline_s: float = 600.0  # the whole download (all redirects and reads), seconds
    allow_private: bool = (
        False  # private/loopback/link-local addresses too; + $WHISPER_SV_LINK_PRIVATE
    )

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts must be a tuple of host names, not one string")
        for entry in self.allowed_hosts:
            check_host_entry(entry)
        limits = (self.max_duration_s, self.max_bytes, self.timeout_s, self.deadline_s)
        if min(limits) <= 0:
            raise ValueError("max_duration_s, max_bytes, timeout_s and deadline_s must all be > 0")

    def hosts(self) -> tuple[str, ...]:
        """The allowed hosts, lower case, with those of $WHISPER_SV_LINK_HOSTS added."""
        extra = [h.strip() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
        return tuple(dict.fromkeys(h.lower() for h in (*self.allowed_hosts, *extra)))

    def address_allowed(self, host: str, address: str) -> bool:
        """Whether ``host`` may be reached at ``address`` (one of its DNS answers).

        Public addresses always; any other (private, loopback, link-local, multicast,
        reserved) only with ``allow_private`` (or $WHISPER_SV_LINK_PRIVATE=1), or when the
        allow-list names that very address (``127.0.0.1:8000`` allows 127.0.0.1, while
        ``localhost`` does not allow what it resolves to).
        """
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_global and not ip.is_multicast:
            return True
        if self.allow_private or os.environ.get(PRIVATE_ENV, "").strip() in ("1", "true", "yes"):
            return True
        return host == address and address in {_entry_host(h) for h in self.hosts()}


def _entry_host(entry: str) -> str:
    """The host of an allow-list entry: "host", "host:port", "[v6]:port" or a bare IPv6."""
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


_HOST_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_ENTRY_RE = re.compile(rf"({_HOST_LABEL})(\.{_HOST_LABEL})*\.?(:(?P<port>\d{{1,5}}))?", re.I)


def check_host_entry(entry: str) -> str:
    """``entry`` if it is an allow-list entry ("host", "host:port", "[v6]:port" or an IPv6
    address), else ValueError saying what to give: a URL or a path is not a host."""
    host = _entry_host(entry)
    try:
        ipaddress.ip_address(host)
        port = entry.rsplit("]:", 1)[1] if entry.startswith("[") and "]:" in entry else None
    except ValueError:
        match = _HOST_ENTRY_RE.fullmatch(entry)
        port = match and match["port"]
        if not match:
            raise ValueError(
                f"{entry!r} is not a host name: give a host or host:port, such as "
                "media.example.org or 127.0.0.1:8000 (no scheme, no path)"
            ) from None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65_536):
        raise ValueError(f"{entry!r}: the port must be 1-65535, e.g. 127.0.0.1:8000")
    return entry


class LinkError(ValueError):
    """A link that cannot be used; the message is meant for the user."""


class DownloadCancelled(LinkError):
    """The download was stopped by its ``cancel`` event."""


@dataclass(frozen=True)
class LinkAudio:
    """The sound of a link, decoded."""

    audio: np.ndarray  # (n,) float32, 16 kHz mono
    url: str  # the link as checked
    title: str  # the page's title (the file name for direct links)
    duration: float  # seconds of decoded audio


_URL_RE = re.compile(r"^(https?://)?[\w.-]+(:\d+)?(/\S*)?$", re.IGNORECASE)


def looks_like_link(text: str) -> bool:
    """Whether ``text`` is one web address (with or without ``https://``), nothing else."""
    text = text.strip()
    if not text or " " in text:
        return False
    if text.lower().startswith(("http://", "https://")):
        return True
    host = text.split("/", 1)[0].lower()
    return bool(_URL_RE.match(text)) and host.rsplit(":", 1)[0] in YOUTUBE_HOSTS


def check_link(url: str, options: LinkOptions | None = None) -> str:
    """``url`` made absolute and checked against the allowed hosts; raises LinkError."""
    options = options or LinkOptions()
    url = url.strip()
    if not url:
        raise LinkError("empty link; paste a YouTube link such as https://youtu.be/VIDEO_ID")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise LinkError(f"unsupported link {url!r}: only http and https links are accepted")
    host = (parts.hostname or "").lower()
    if not host:
        raise LinkError(f"not a valid link: {url!r}")
    try:
        port = parts.port
    except ValueError as err:
        raise LinkError(f"not a valid link: {url!r} ({err})") from err
    allowed = options.hosts()
    if host not in allowed and f"{host}:{port}" not in allowed:
        names = ", ".join(h for h in allowed if not h.startswith("www."))
        where = f"{host}:{port}" if port else host
        raise LinkError(f"links to {where} are not accepted; allowed hosts: {names}")
    return url


def _is_youtube(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower() in YOUTUBE_HOSTS


def fetch_audio(
    url: str,
    options: LinkOptions | None = None,
    *,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
) -> LinkAudio:
    """Download the audio of ``url`` and decode it; the downloaded file is deleted.

    ``on_progress`` gets the fraction downloaded (0..1) now and then. Raises LinkError for a
    bad, disallowed, private, unreachable, too long, too large or too slow link (over
    ``options.deadline_s``), or one whose file is not audio; DownloadCancelled once
    ``cancel`` is set (within :data:`CANCEL_POLL_S`).
    """
    options = options or LinkOptions()
    url = check_link(url, options)
    stop = _Stop(cancel, options.deadline_s)
    with tempfile.TemporaryDirectory(prefix="whisper-sv-link-") as folder:
        if _is_youtube(url):
            _resolve_checked(urlsplit(url).hostname or "", options)
            path, title = download_link(url, Path(folder), options, on_progress, stop)
        else:
            path, title = _direct_download(url, Path(folder), options, on_progress, stop)
        stop.check()
        try:
            audio = load_audio(path, name=title)
        except AudioError as err:
            raise LinkError(f"the link's file is not usable audio: {err.reason}") from err
    seconds = duration_s(audio)
    if seconds > options.max_duration_s:
        raise LinkError(_too_long(seconds, options.max_duration_s))
    if seconds == 0:
        raise LinkError("the link's file holds no sound")
    return LinkAudio(audio=audio, url=url, title=title, duration=seconds)


class _Stop:
    """Why a download must stop now: its ``cancel`` event, or its total deadline."""

    def __init__(self, cancel: threading.Event | None, deadline_s: float) -> None:
        self.cancel = cancel
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s

    def reason(self) -> LinkError | None:
        if self.cancel is not None and self.cancel.is_set():
            return DownloadCancelled("the download was cancelled")
        if time.monotonic() > self.deadline:
            return LinkError(
                f"the download took longer than {self.deadline_s:g} s; "
                "the site sends too slowly, try again later"
            )
        return None

    def check(self) -> None:
        """Raise the reason to stop, if there is one."""
        if (err := self.reason()) is not None:
            raise err

    def watch(self, sock: socket.socket) -> Callable[[], None]:
        """Shut ``sock`` down as soon as there is a reason to stop (a read blocked on a slow
        site then returns at once); returns the function that ends the watch."""
        done = threading.Event()

        def run() -> None:
            while not done.wait(CANCEL_POLL_S):
                if self.reason() is not None:
                    with contextlib.suppress(OSError):  # already closed
                        sock.shutdown(socket.SHUT_RDWR)
                    return

        threading.Thread(target=run, name="link-watch", daemon=True).start()
        return done.set


def download_link(
    url: str,
    folder: Path,
    options: LinkOptions,
    on_progress: Callable[[float], None] | None,
    stop: _Stop | None = None,
) -> tuple[Path, str]:
    """(path of the downloaded audio file in ``folder``, title)."""
    import yt_dlp

    stop = stop or _Stop(None, options.deadline_s)

    def hook(status: dict) -> None:
        stop.check()  # raised inside yt-dlp, which ends the download
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        if on_progress and status.get("status") == "downloading" and total:
            on_progress(min(1.0, status.get("downloaded_bytes", 0) / total))

    params = {
        # Audio only: the smallest stream that is enough for Whisper, and no ffmpeg merge.
        "format": "bestaudio/best",
        "outtmpl": str(folder / "%(id).80B.%(ext)s"),
        "restrictfilenames": True,
        "noplaylist": True,
        "allowed_extractors": list(YOUTUBE_EXTRACTORS),  # never the generic extractor
        "extract_flat": "in_playlist",  # a playlist is listed, not downloaded (refused below)
        "max_filesize": options.max_bytes,
        "socket_timeout": options.timeout_s,
        "retries": 1,
        "cachedir": False,  # writes nothing outside ``folder``
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "no_color": True,
        "logger": _YtLogger(),
        "progress_hooks": [hook],
    }
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            info = ydl.extract_info(url, download=False)
            check_info(info, options)
            info = ydl.process_ie_result(info, download=True)
    except LinkError:
        raise
    except yt_dlp.utils.DownloadError as err:
        stop.check()  # yt-dlp wraps the hook's exception: the reason is ours
        raise LinkError(explain_ytdlp_error(str(err), url)) from err
    except yt_dlp.utils.YoutubeDLError as err:  # other yt-dlp failures, same treatment
        raise LinkError(explain_ytdlp_error(str(err), url)) from err
    title = str(info.get("title") or info.get("id") or "link")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".part")]
    if not files:
        # yt-dlp skips (does not fail) a download over max_filesize.
        raise LinkError(f"the file is larger than the limit of {_mb(options.max_bytes)}")
    return max(files, key=lambda p: p.stat().st_size), title


def _resolve_checked(host: str, options: LinkOptions, port: int = 443) -> list[str]:
    """The addresses of ``host``, every one allowed by ``options``; raises LinkError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise LinkError(
            f"cannot reach {host}: no internet connection, or the site is down"
        ) from err
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    refused = [a for a in addresses if not options.address_allowed(host, a)]
    if refused or not addresses:
        raise LinkError(
            f"links to {host} are not accepted: it is a private or local address ({refused[0] if refused else '?'})"
        )
    return addresses


def _connection(url: str, options: LinkOptions):
    """An http.client connection to ``url``'s host, pinned to a checked address."""
    import http.client
    import ssl

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = _resolve_checked(host, options, port)[0]
    base = http.client.HTTPSConnection if https else http.client.HTTPConnection

    class Pinned(base):  # connects to the checked address, not a fresh DNS answer
        def connect(self) -> None:
            self.sock = socket.create_connection((address, port), self.timeout)
            if https:
                self.sock = ssl.create_default_context().wrap_socket(
                    self.sock, server_hostname=host
                )

    return Pinned(host, port, timeout=options.timeout_s)


def _direct_download(
    url: str,
    folder: Path,
    options: LinkOptions,
    on_progress: Callable[[float], None] | None,
    stop: _Stop | None = None,
) -> tuple[Path, str]:
    """A media file fetched hop by hop: each redirect target is checked like the first link."""
    stop = stop or _Stop(None, options.deadline_s)
    for hop in range(MAX_REDIRECTS + 1):
        stop.check()
        try:
            url = check_link(url, options)
        except LinkError as err:
            if not hop:
                raise
            raise LinkError(f"the link redirects elsewhere: {err}") from err
        parts = urlsplit(url)
        conn = _connection(url, options)
        unwatch = response = None
        try:
            conn.connect()
            unwatch = stop.watch(conn.sock)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "whisper-sv", "Accept": "*/*"})
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            return _save_body(response, url, folder, options, on_progress, stop)
        except (OSError, http.client.HTTPException) as err:  # refused, timed out, TLS, cut off
            stop.check()  # a socket shut by the watch: cancelled or over the deadline
            raise LinkError(f"cannot reach {parts.hostname}: {_reason(err)}") from err
        finally:
            if unwatch is not None:
                unwatch()
            if response is not None:  # it holds the socket open until closed itself
                response.close()
            conn.close()
    raise LinkError(f"too many redirects (more than {MAX_REDIRECTS})")


def _reason(err: OSError | http.client.HTTPException) -> str:
    if isinstance(err, TimeoutError):
        return "the site did not answer in time"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (no server there)"
    return "no internet connection, or the site is down"


def _save_body(
    response, url: str, folder: Path, options: LinkOptions, on_progress, stop: _Stop
) -> tuple[Path, str]:
    """Write a 200 response's body to ``folder`` (size-limited); other statuses: LinkError."""
    if response.status != 200:
        if response.status == 404:
            raise LinkError("nothing at this link (HTTP 404: not found)")
        if response.status == 403:
            raise LinkError("the site refused the download (HTTP 403: forbidden)")
        raise LinkError(f"the site answered HTTP {response.status} {response.reason}")
    kind = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        raise LinkError("no audio or video found at this link (it is a web page)")
    total = int(response.getheader("Content-Length") or 0)
    if total > options.max_bytes:
        raise LinkError(
            f"the file ({_mb(total)}) is larger than the limit of {_mb(options.max_bytes)}"
        )
    name = unquote(Path(urlsplit(url).path).name) or "link"
    target = folder / "download"
    done = 0
    with open(target, "wb") as out:
        # read1: what has arrived (one receive), not a full 64 kB: a slow site is checked
        # against the deadline and the cancel event between receives.
        while chunk := response.read1(1 << 16):
            stop.check()
            done += len(chunk)
            if done > options.max_bytes:
                raise LinkError(f"the file is larger than the limit of {_mb(options.max_bytes)}")
            out.write(chunk)
            if on_progress and total:
                on_progress(min(1.0, done / total))
    stop.check()  # a socket shut by the watch ends the body early: say why
    if total and done < total:
        raise LinkError(f"the site stopped sending after {_mb(done)} of {_mb(total)}")
    if on_progress:
        on_progress(1.0)
    return target, Path(name).stem or name


def check_info(info: dict | None, options: LinkOptions) -> None:
    """LinkError when yt-dlp's ``info`` of a link is nothing, a playlist, a live stream, or
    says it is longer or larger than ``options`` allow (checked before downloading)."""
    if not info:
        raise LinkError("no audio or video found at this link")
    if info.get("_type") in ("playlist", "multi_video"):
        raise LinkError("this is a playlist; send the link of one video")
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
        raise LinkError("live streams cannot be transcribed; send the link once it has ended")
    duration = info.get("duration")
    if duration and duration > options.max_duration_s:
        raise LinkError(_too_long(float(duration), options.max_duration_s))
    size = info.get("filesize") or info.get("filesize_approx")
    if size and size > options.max_bytes:
        raise LinkError(
            f"the file ({_mb(size)}) is larger than the limit of {_mb(options.max_bytes)}"
        )


# yt-dlp's words -> the user's. First match wins; checked on the lower-cased message.
_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("private video", "sign in if you've been granted", "members-only", "join this channel"),
        "the video is private or for members only; only public videos can be transcribed",
    ),
    (
        ("confirm your age", "age-restricted", "inappropriate for some users"),
        "the video is age-restricted and needs a login; only public videos can be transcribed",
    ),
    (("requested format is not available",), "no audio stream found at this link"),
    (
        (
            "video unavailable",
            "this video is not available",
            "has been removed",
            "account associated",
        ),
        "the video is unavailable (removed, or blocked where this server is)",
    ),
    (("incomplete youtube id", "invalid url", "is not a valid url"), "not a valid video link"),
    (("unsupported url", "no suitable extractor"), "no audio or video found at this link"),
    (("http error 404", "not found"), "nothing at this link (HTTP 404: not found)"),
    (("http error 403", "forbidden"), "the site refused the download (HTTP 403: forbidden)"),
    (
        (
            "failed to resolve",
            "name or service not known",
            "temporary failure in name resolution",
            "connection refused",
            "timed out",
            "unreachable",
            "unable to download webpage",
            "transporterror",
        ),
        "cannot reach {host}: no internet connection, or the site is down",
    ),
)


def explain_ytdlp_error(message: str, url: str) -> str:
    """A one-line reason for the user from a yt-dlp error message."""
    host = urlsplit(url).hostname or url
    lower = message.lower()
    for needles, reason in _REASONS:
        if any(n in lower for n in needles):
            return reason.format(host=host)
    # Unknown: yt-dlp's own first line without its "ERROR: [extractor] id:" prefix.
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    first = re.sub(r"^ERROR:\s*", "", first)
    first = re.sub(r"^\[[^\]]+\]\s*[^:]*:\s*", "", first)
    return f"the download failed: {first}"


def _too_long(seconds: float, limit: float) -> str:
    return f"the recording is too long ({_hms(seconds)}); the limit is {_hms(limit)}"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} kB"


class _YtLogger:
    """yt-dlp's messages into this module's logger (errors come back as exceptions too)."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)
