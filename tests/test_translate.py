"""Translation: options, text splitting, and the online translator's failure messages.

The machine running the tests has no internet, which is exactly the case the online
translator's message is for; the proxy tests make that failure deterministic anywhere.
"""

from __future__ import annotations

import socket
import threading

import pytest

from whisper_sv.infer import translate
from whisper_sv.infer.translate import TranslateOptions, TranslationUnavailable


def test_options_are_validated():
    assert TranslateOptions().backend == "whisper"
    with pytest.raises(ValueError, match="whisper, google, none"):
        TranslateOptions(backend="deepl")
    with pytest.raises(ValueError, match="only into English"):
        TranslateOptions(backend="whisper", target="de")
    assert TranslateOptions(backend="google", target="de").target == "de"
    with pytest.raises(ValueError, match="timeout_s"):
        TranslateOptions(backend="google", timeout_s=0)


@pytest.mark.parametrize("limit", [10, 25, 4500])
def test_pieces_respect_the_limit_and_keep_every_word(limit):
    text = "\n".join(["kort rad", "en mycket lång rad " * 4, "x" * 30, "", "sista raden här"])
    pieces = translate._pieces(text, limit)
    assert all(0 < len(p) <= limit for p in pieces)
    # Same characters in the same order (a word longer than the limit is cut inside).
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_empty_text_needs_no_network():
    assert translate.translate_text("  \n ", TranslateOptions(backend="google")) == ""


def test_unreachable_online_translator_says_so(monkeypatch):
    # A proxy on a port nobody listens on: the request fails at once, online or not.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    with pytest.raises(TranslationUnavailable) as info:
        translate.translate_text(
            "Hej, hur mår du?", TranslateOptions(backend="google", timeout_s=5)
        )
    message = str(info.value)
    assert "cannot reach Google Translate" in message
    assert "offline Whisper translation" in message


def test_a_silent_server_is_abandoned_after_the_timeout(monkeypatch):
    # A proxy that accepts the connection and never answers: only our timeout ends the wait.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    # Without the timeout this would wait for pytest's own limit and fail there.
    try:
        with pytest.raises(TranslationUnavailable, match=r"did not answer within 1 s"):
            translate.translate_text("Hej", TranslateOptions(backend="google", timeout_s=1))
    finally:
        stop.set()
        for conn in held:
            conn.close()
        server.close()


# ------------------------------------------------------------------ speech translation


def test_no_swedish_text_no_translation(tiny_ct2_dir):
    # Digital silence has no Swedish text: nothing is translated, whether the caller passes
    # the transcript or not. Noise that the random model "reads" is translated.
    import numpy as np

    from whisper_sv.infer.transcriber import Segment, Transcriber

    ct2 = Transcriber(str(tiny_ct2_dir), device="cpu")
    silence = np.zeros(16_000 * 3, np.float32)
    assert list(translate.translate_speech(ct2, silence)) == []
    noise = np.random.default_rng(0).normal(0, 0.1, 16_000 * 2).astype(np.float32)
    fast = {"max_new_tokens": 8, "loop_guard": False}
    assert list(translate.translate_speech(ct2, noise, swedish=[], **fast)) == []
    said = [Segment(0.0, 1.0, "hej")]
    unguarded = {**fast, "speech_gate": False, "check_translation": False}
    assert list(translate.translate_speech(ct2, noise, swedish=said, **unguarded))
    # The speech guard hears no speech in the noise: no English, and it says why.
    dropped: list = []
    assert list(translate.translate_speech(ct2, noise, swedish=said, dropped=dropped)) == []
