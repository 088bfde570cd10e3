"""Audio from a link: yt-dlp (as a library, no shell) downloads the sound track.

Only YouTube links are accepted by default. Other hosts are added with
``LinkOptions(allowed_hosts=...)`` or the environment variable ``WHISPER_SV_LINK_HOSTS``
(comma-separated, e.g. ``127.0.0.1:8000`` for a local test server; a host without a port
allows every port). Only the audio is fetched, into a temporary folder that is removed
before :func:`fetch_audio` returns. Length and size are checked before the download where
the site says them, and again after it. Every failure is a :class:`LinkError` whose message
can be shown to the user as it is.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from whisper_sv.audio import AudioError, duration_s, load_audio

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


@dataclass(frozen=True)
class LinkOptions:
    """What links are accepted and how much is downloaded."""

    allowed_hosts: tuple[str, ...] = (
        YOUTUBE_HOSTS  # "host" (any port) or "host:port"; + $WHISPER_SV_LINK_HOSTS
    )
    max_duration_s: float = 3_600.0  # longer recordings are refused (before download if known)
    max_bytes: int = 200 * 1024 * 1024  # larger downloads are refused / aborted
    timeout_s: float = 20.0  # network timeout of each request, seconds

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts must be a tuple of host names, not one string")
        if self.max_duration_s <= 0 or self.max_bytes <= 0 or self.timeout_s <= 0:
            raise ValueError("max_duration_s, max_bytes and timeout_s must all be > 0")

    def hosts(self) -> tuple[str, ...]:
        """The allowed hosts, lower case, with those of $WHISPER_SV_LINK_HOSTS added."""
        extra = [h.strip() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
        return tuple(dict.fromkeys(h.lower() for h in (*self.allowed_hosts, *extra)))


class LinkError(ValueError):
    """A link that cannot be used; the message is meant for the user."""


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


def fetch_audio(
    url: str,
    options: LinkOptions | None = None,
    *,
    on_progress: Callable[[float], None] | None = None,
) -> LinkAudio:
    """Download the audio of ``url`` and decode it; the downloaded file is deleted.

    ``on_progress`` gets the fraction downloaded (0..1) now and then. Raises LinkError for a
    bad, disallowed, private, unreachable, too long or too large link, or one whose file is
    not audio.
    """
    options = options or LinkOptions()
    url = check_link(url, options)
    with tempfile.TemporaryDirectory(prefix="whisper-sv-link-") as folder:
        path, title = _download(url, Path(folder), options, on_progress)
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


def _download(
    url: str,
    folder: Path,
    options: LinkOptions,
    on_progress: Callable[[float], None] | None,
) -> tuple[Path, str]:
    """(path of the downloaded audio file in ``folder``, title)."""
    import yt_dlp

    def hook(status: dict) -> None:
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        if on_progress and status.get("status") == "downloading" and total:
            on_progress(min(1.0, status.get("downloaded_bytes", 0) / total))

    params = {
        # Audio only: the smallest stream that is enough for Whisper, and no ffmpeg merge.
        "format": "bestaudio/best",
        "outtmpl": str(folder / "%(id).80B.%(ext)s"),
        "restrictfilenames": True,
        "noplaylist": True,
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
            _check_info(info, options)
            info = ydl.process_ie_result(info, download=True)
    except yt_dlp.utils.DownloadError as err:
        raise LinkError(_explain(str(err), url)) from err
    except yt_dlp.utils.YoutubeDLError as err:  # other yt-dlp failures, same treatment
        raise LinkError(_explain(str(err), url)) from err
    title = str(info.get("title") or info.get("id") or "link")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".part")]
    if not files:
        # yt-dlp skips (does not fail) a download over max_filesize.
        raise LinkError(f"the file is larger than the limit of {_mb(options.max_bytes)}")
    return max(files, key=lambda p: p.stat().st_size), title


def _check_info(info: dict | None, options: LinkOptions) -> None:
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
    (("unsupported url",), "no audio or video found at this link"),
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


def _explain(message: str, url: str) -> str:
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
