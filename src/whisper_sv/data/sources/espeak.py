"""espeak-ng through ctypes: Swedish text -> int16 speech, no system package needed.

The ``espeakng-loader`` wheel bundles ``libespeak-ng.so`` (1.52) and ``espeak-ng-data`` (with
the Swedish dictionary and the voice variants under ``voices/!v``). The library is one
global engine per process and is not thread-safe: this module serialises calls with a lock
per process, so parallel synthesis means processes. Each utterance is rendered by a freshly
loaded library (see ``_Engine``), which makes the output a pure function of the text and
the voice settings, whatever was spoken before and in whichever worker.

In synchronous mode espeak renders 3-4 s of speech in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["EspeakError", "data_path", "synthesize", "variant_gender", "variants", "version"]

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # render in espeak_Synth, deliver through the callback
_CHARS_UTF8 = 1  # espeakCHARS_UTF8: the text is UTF-8
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER ids
RATE_MIN, RATE_MAX = 80, 450  # words per minute (espeakRATE_MINIMUM/MAXIMUM)
PITCH_MIN, PITCH_MAX = 0, 100  # base pitch, 50 = the voice's normal


class EspeakError(RuntimeError):
    """espeak-ng is missing, failed to start, or failed to speak a text."""


def data_path() -> Path:
    """The bundled ``espeak-ng-data`` folder."""
    return _loader_dir() / "espeak-ng-data"


def version() -> str:
    """The installed espeakng-loader version (the wheel pins the espeak-ng build)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("espeakng-loader")
    except PackageNotFoundError:
        return "unknown"


def variants() -> tuple[str, ...]:
    """Voice variant names available to ``sv+<variant>`` (files in ``voices/!v``), sorted."""
    vdir = data_path() / "voices" / "!v"
    return tuple(sorted(p.name for p in vdir.iterdir() if p.is_file()))


def variant_gender(variant: str) -> str:
    """``"male"``, ``"female"`` or ``"unknown"``, from the variant file's ``gender`` line."""
    path = data_path() / "voices" / "!v" / variant
    if not path.is_file():
        raise ValueError(f"unknown espeak-ng voice variant {variant!r}; see {path.parent}")
    for line in path.read_text("utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "gender" and parts[1] in ("male", "female"):
            return parts[1]
    return "unknown"


def synthesize(
    text: str,
    *,
    voice: str = "sv",
    rate: int = 175,
    pitch: int = 50,
    volume: int = 100,
) -> tuple[np.ndarray, int]:
    """Speak ``text``: returns ``(samples, sample_rate)``, samples (n,) int16, rate 22050 Hz.

    ``voice`` is an espeak voice name such as ``"sv"`` or ``"sv+f3"``; ``rate`` in words per
    minute (80-450), ``pitch`` 0-100 (50 = the voice's normal), ``volume`` 0-200 (100 =
    normal; more distorts). Raises EspeakError when the voice is unknown or nothing came out.
    """
    if not RATE_MIN <= rate <= RATE_MAX:
        raise ValueError(f"rate {rate} is outside espeak's {RATE_MIN}..{RATE_MAX} words/min")
    if not PITCH_MIN <= pitch <= PITCH_MAX:
        raise ValueError(f"pitch {pitch} is outside {PITCH_MIN}..{PITCH_MAX}")
    return _engine().speak(text, voice=voice, rate=rate, pitch=pitch, volume=volume)


# ------------------------------------------------------------------------------- engine

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Engine:
    """The process' espeak-ng: one utterance at a time, each from a freshly loaded library.

    espeak-ng keeps state between utterances in static variables that ``espeak_Initialize``
    does not reset (the pitch-flutter phase, the gain control, Klatt filter memories): the
    same text rendered twice in a row came out different (lengths up to 1 % apart, samples
    differing after the first 90 ms). To make an utterance a pure function of its inputs,
    every call loads the library, renders and unloads it (``dlclose``), so each starts from
    the library's initial state; this costs about 3 ms per utterance. The library is loaded
    from a private copy so that no other user of ``espeakng-loader`` in the process can keep
    it mapped (and its state alive) between our calls.

    Known cost: espeak_Terminate does not free what espeak_SetVoiceByName allocates, about
    3 KB per utterance (measured: RSS +2.8 MB per 1,000 calls), so 10,000 clips grow one
    process by about 30 MB.
    """

    def __init__(self) -> None:
        self.lib_path = _private_copy()
        self.lock = threading.Lock()
        self.chunks: list[np.ndarray] = []
        # ctypes frees a callback whose Python object dies: keep it on the engine.
        self.callback = _CALLBACK(self._on_audio)
        log.debug("espeak-ng engine for process %d from %s", os.getpid(), self.lib_path)

    def _on_audio(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # continue

    def speak(
        self, text: str, *, voice: str, rate: int, pitch: int, volume: int
    ) -> tuple[np.ndarray, int]:
        data = text.encode("utf-8")
        with self.lock:
            lib = _open(self.lib_path)
            try:
                sample_rate = lib.espeak_Initialize(
                    _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path()).encode(), 0
                )
                if sample_rate <= 0:
                    raise EspeakError(f"espeak_Initialize failed with data at {data_path()}")
                lib.espeak_SetSynthCallback(self.callback)
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise EspeakError(f"espeak-ng has no voice {voice!r}")
                for param, value in ((_RATE, rate), (_PITCH, pitch), (_VOLUME, volume)):
                    lib.espeak_SetParameter(param, int(value), 0)
                # espeak_Initialize seeds espeak's random generator with the clock, and
                # voices with breath noise (f5 and others) draw from it: seed it from the
                # inputs so the same inputs give the same samples at any time.
                lib.espeak_ng_SetRandSeed(
                    zlib.crc32(f"{voice}|{rate}|{pitch}|{volume}|{text}".encode())
                )
                self.chunks = []
                rc = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
                chunks, self.chunks = self.chunks, []
            finally:
                lib.espeak_Terminate()
                _close(lib)
        if rc != 0:
            raise EspeakError(f"espeak_Synth failed (error {rc}) on {text[:60]!r}")
        if not chunks:
            raise EspeakError(f"espeak-ng produced no audio for {text[:60]!r}")
        return np.concatenate(chunks), sample_rate


def _open(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise EspeakError(f"cannot load {path}: {err}") from err
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # size in bytes, with the terminating zero
        ctypes.c_uint,  # position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique identifier
        ctypes.c_void_p,  # user data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    return lib


def _close(lib: ctypes.CDLL) -> None:
    import _ctypes

    _ctypes.dlclose(lib._handle)


def _private_copy() -> Path:
    """A copy of the bundled library under the cache folder (one per library version)."""
    import hashlib
    import shutil
    import tempfile

    from whisper_sv.core.fsutil import cache_dir, temp_name

    src = _loader_dir() / "libespeak-ng.so"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    for root in (cache_dir() / "espeak", Path(tempfile.gettempdir()) / "whisper-sv-espeak"):
        dest = root / digest / "libespeak-ng.so"
        if dest.is_file():
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_name(dest)
            shutil.copyfile(src, tmp)
            tmp.replace(dest)  # atomic: concurrent workers never load a half-written file
            return dest
        except OSError as err:
            log.debug("cannot copy espeak-ng to %s: %s", dest, err)
    raise EspeakError(f"cannot copy {src} to a writable cache folder")


_ENGINE: _Engine | None = None
_ENGINE_PID = -1
_START_LOCK = threading.Lock()


def _engine() -> _Engine:
    """The engine of this process, made on first use (a forked child makes its own, with a
    fresh lock: the parent's may have been held by another thread at the fork)."""
    global _ENGINE, _ENGINE_PID
    pid = os.getpid()
    if _ENGINE is None or pid != _ENGINE_PID:
        with _START_LOCK:
            if _ENGINE is None or pid != _ENGINE_PID:
                _ENGINE = _Engine()
                _ENGINE_PID = pid
    return _ENGINE


def _loader_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("espeakng_loader")
    if spec is None or not spec.submodule_search_locations:
        raise EspeakError("the synthetic source needs espeak-ng: pip install espeakng-loader")
    return Path(next(iter(spec.submodule_search_locations)))
