"""The app's options (``AppOptions``: how it is served, what it accepts) and its choices."""

from __future__ import annotations

import re
from dataclasses import dataclass

from whisper_sv.infer import links, translate
from whisper_sv.models.references import DEFAULT_MODEL

__all__ = [
    "LANGUAGE_CHOICES",
    "LANGUAGE_NAMES",
    "QUALITY_BEAMS",
    "QUALITY_CHOICES",
    "SIZE_PATTERN",
    "TRANSLATOR_CHOICES",
    "AppOptions",
]

TRANSLATOR_CHOICES: tuple[tuple[str, str], ...] = (
    ("English by Whisper (offline)", "whisper"),
    ("English by Google Translate (online)", "google"),
    ("No translation", "none"),
)
# Spoken languages offered (label in its own language, Whisper code); Swedish first.
LANGUAGE_CHOICES: tuple[tuple[str, str], ...] = (
    ("Svenska", "sv"),
    ("English", "en"),
    ("Norsk", "no"),
    ("Dansk", "da"),
    ("Suomi", "fi"),
    ("Deutsch", "de"),
    ("Français", "fr"),
    ("Español", "es"),
    ("Detect the language", "auto"),  # the model's guess (faster-whisper), shown in the reply
)
LANGUAGE_NAMES = {code: name for name, code in LANGUAGE_CHOICES}
QUALITY_CHOICES: tuple[tuple[str, str], ...] = (
    ("Fast (greedy)", "fast"),
    ("Accurate (beam 5, about 1.6x slower)", "accurate"),
)
QUALITY_BEAMS = {"fast": 1, "accurate": 5}
SIZE_PATTERN = re.compile(r"\d+(\.\d+)?\s*(b|kb|mb|gb)?", re.IGNORECASE)  # Gradio's size syntax


@dataclass(frozen=True)
class AppOptions:
    """How the app is served and what it accepts."""

    model: str = DEFAULT_MODEL  # model selected when the page opens
    # Folders whose runs the model picker lists ("runs": train's usual place, "demo-out": the
    # demo's run); a run folder itself may be given too. None: no runs.
    runs_dir: str | tuple[str, ...] | None = ("runs", "demo-out")
    # The picker also lists every Whisper model in the Hugging Face hub cache (HF_HUB_CACHE),
    # at each cached branch and tag (ORG/NAME@REVISION); they load offline
    hub_models: bool = True
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 exposes the app to the network
    port: int = 7860  # TCP port, 1-65535
    max_file_size: str = "200mb"  # largest upload Gradio accepts: a number and b/kb/mb/gb
    max_duration_s: float = 3_600.0  # longer recordings (uploads and links) are refused
    concurrency_limit: int = 2  # requests decoded at once (2 fits 2 CPU cores); others queue
    max_queue: int = 64  # requests allowed to wait; beyond that users get "queue full"
    translator: str = "whisper"  # translation preselected: "whisper", "google" or "none"
    translate_timeout_s: float = 10.0  # online translator: give up after this many seconds
    beam_size: int = 1  # quality preselected: 1 = fast (greedy, 1.6x faster on CPU), 5 = accurate
    language: str = "sv"  # spoken language preselected (a code of LANGUAGE_CHOICES)
    timestamps_after_s: float = 30.0  # audio longer than this is shown with timestamps
    # hosts links may come from (HOST or HOST:PORT), and those of $WHISPER_SV_LINK_HOSTS
    link_hosts: tuple[str, ...] = links.YOUTUBE_HOSTS
    link_timeout_s: float = 20.0  # network timeout of each read of a link download, seconds
    link_deadline_s: float = 600.0  # a link download that takes longer is stopped, seconds
    allow_private_links: bool = False  # links may reach private and loopback addresses (a LAN)
    uploads_per_hour: int = 200  # uploads one client address may make an hour (off on loopback)
    upload_mb_per_hour: float = 2_000.0  # megabytes one client may upload an hour (same rule)
    budget_on_loopback: bool = False  # the upload budget on 127.0.0.1 too (a proxy in front)

    def __post_init__(self) -> None:
        if self.translator not in translate.TRANSLATORS:
            raise ValueError(
                f"translator must be one of {', '.join(translate.TRANSLATORS)}, not {self.translator!r}"
            )
        if not 0 < self.port < 65_536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.concurrency_limit < 1 or self.max_queue < 1:
            raise ValueError("concurrency_limit and max_queue must be at least 1")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not SIZE_PATTERN.fullmatch(str(self.max_file_size).strip()):
            raise ValueError(
                f"max file size must be a number with an optional unit b, kb, mb or gb "
                f"(e.g. 200mb), not {self.max_file_size!r}"
            )
        if self.language not in dict((code, n) for n, code in LANGUAGE_CHOICES):
            codes = ", ".join(code for _, code in LANGUAGE_CHOICES)
            raise ValueError(f"language must be one of {codes}, not {self.language!r}")
        if self.uploads_per_hour < 1 or self.upload_mb_per_hour <= 0:
            raise ValueError("uploads_per_hour must be >= 1 and upload_mb_per_hour > 0")
        self.link_options()  # a bad link host (a URL, a path) fails here, not on first use

    def link_options(self) -> links.LinkOptions:
        return links.LinkOptions(
            allowed_hosts=self.link_hosts,
            max_duration_s=self.max_duration_s,
            timeout_s=self.link_timeout_s,
            deadline_s=self.link_deadline_s,
            allow_private=self.allow_private_links,
        )

    def run_folders(self) -> tuple[str, ...]:
        if not self.runs_dir:
            return ()
        return (self.runs_dir,) if isinstance(self.runs_dir, str) else tuple(self.runs_dir)

    @property
    def quality(self) -> str:
        """The quality preselected, from ``beam_size``."""
        return "fast" if self.beam_size == 1 else "accurate"
