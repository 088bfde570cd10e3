"""The app without a browser: the request stream, its messages, the API, the queue, the Space.

Fast tests run the tiny random Whisper (``tiny_ct2_dir``): its words are noise, so they check
the plumbing (states, files, messages, concurrency), not the transcript. Tests marked slow run
the bundled Whisper base and check the words.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.app import chat as app_mod
from whisper_sv.app.api import NOT_UPLOADED
from whisper_sv.app.chat import AppOptions, ChatApp, Reply, render_markdown
from whisper_sv.app.pipeline import declared_duration
from whisper_sv.cli import main as cli
from whisper_sv.core.text import wer
from whisper_sv.infer import links

SENTENCE = "Stockholm är Sveriges huvudstad och ligger vid Mälaren."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speak(path: Path, text: str = SENTENCE, voice: str = "sv+m3") -> Path:
    """Swedish speech from espeak-ng written to ``path`` (a wav at espeak's 22,050 Hz)."""
    from whisper_sv.data.sources import espeak

    pcm, rate = espeak.synthesize(text, voice=voice, rate=150)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module", autouse=True)
def gradio_folder(tmp_path_factory) -> Path:
    """A private Gradio upload folder for this module (others may share the default one)."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def clips(gradio_folder) -> dict[str, Path]:
    """A spoken Swedish sentence, a second one, a corrupt wav and a text file, in the upload
    folder (as if uploaded: the handlers accept nothing else)."""
    root = gradio_folder / "clips"
    root.mkdir()
    out = {
        "speech": speak(root / "stockholm.wav"),
        "speech2": speak(root / "morgon.wav", "God morgon, hur mår du i dag?", "sv+f3"),
        "corrupt": root / "broken.wav",
        "text": root / "notes.txt",
    }
    # A wav's magic, then bytes no decoder can parse (a fixed pattern: the test is repeatable).
    out["corrupt"].write_bytes(b"RIFF" + bytes(range(256)) * 8)
    out["text"].write_text("Det här är ingen ljudfil.\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny_app(tiny_ct2_dir) -> ChatApp:
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None))
    yield chat
    chat.close()


# --------------------------------------------------------------------------- options


def test_options_are_validated():
    assert AppOptions().host == "127.0.0.1"  # never the network unless asked
    with pytest.raises(ValueError, match="whisper, google, none"):
        AppOptions(translator="deepl")
    with pytest.raises(ValueError, match="port"):
        AppOptions(port=0)
    with pytest.raises(ValueError, match="concurrency_limit"):
        AppOptions(concurrency_limit=0)


def test_model_picker_lists_bundled_and_runs(tmp_path):
    runs = tmp_path / "runs"
    for name in ("b-run", "a-run"):
        (runs / name / "best").mkdir(parents=True)
        (runs / name / "config.yaml").write_text("model: bundled:base\n")
    (runs / "half-written").mkdir()  # no config.yaml, no best/: not a run
    (runs / "notes.txt").write_text("x")
    chat = ChatApp(AppOptions(runs_dir=str(runs), hub_models=False))  # this machine's hub cache
    choices = chat.model_choices()
    assert choices[0] == ("bundled:base", "bundled:base")
    assert [label for label, _ in choices[1:]] == ["run: a-run", "run: b-run"]
    assert Path(choices[1][1]) == runs / "a-run"
    none = AppOptions(runs_dir=str(tmp_path / "none"), hub_models=False)
    assert ChatApp(none).model_choices() == choices[:1]


def test_the_app_serves_hub_models_from_the_hub_cache(tiny_hub, clips, tmp_path, capsys):
    """``app --model ORG/NAME@REVISION`` and the picker: every Whisper model of the hub cache
    is listed at each cached branch and tag, and a transformers-only revision is served by
    the ct2 backend after one conversion, offline."""
    from conftest import TINY_HUB

    subtitle = f"{TINY_HUB}@subtitle"
    chat = ChatApp(AppOptions(runs_dir=None))
    hub = [c for c in chat.model_choices() if c[0].startswith("hub: ")]
    assert hub == [(f"hub: {TINY_HUB}", TINY_HUB), (f"hub: {subtitle}", subtitle)]
    last = list(chat.run(str(clips["speech"]), None, subtitle, "none"))[-1]
    assert not last.error and last.swedish
    assert f"· model hub: {subtitle}" in render_markdown(last)
    chat.close()
    commit = tiny_hub.commits[subtitle]
    converted = tmp_path / "whisper-sv-cache" / "hub" / "models--sv-test--whisper-tiny"
    assert (converted / f"{commit}-ct2" / "model.bin").is_file()
    assert ChatApp(AppOptions(runs_dir=None, hub_models=False)).model_choices() == [
        ("bundled:base", "bundled:base")
    ]
    # --model is loaded before the page opens; here into a Space, which serves model/ only.
    space = tmp_path / "space"
    assert cli.main(["app", "--model", subtitle, "--export-space", str(space)]) == 0
    model_bin = (converted / f"{commit}-ct2" / "model.bin").read_bytes()
    assert (space / "model" / "model.bin").read_bytes() == model_bin
    assert "hub_models=False" in (space / "app.py").read_text()
    assert cli.main(["app", "--model", f"{TINY_HUB}@strict"]) == 2
    assert "not available offline" in capsys.readouterr().err


# --------------------------------------------------------------------------- requests


def test_a_clip_streams_into_a_transcript_translation_and_files(tiny_ct2_dir, clips):
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None))
    states = list(chat.run(str(clips["speech"]), None, None, "whisper"))
    shown = [render_markdown(s) for s in states]
    assert "Reading the file" in shown[0]
    assert any("Loading the model" in s for s in shown)
    assert any("Transcribing… 0% (0:00 of 0:03)" in s for s in shown)
    again = [r.status for r in chat.run(str(clips["speech"]), None, None, "none")]
    assert "Loading the model…" not in again  # loaded once, then shared
    last = states[-1]
    assert not last.error and last.status == ""
    assert last.duration == pytest.approx(3.6, abs=0.4)
    assert "⏳" not in shown[-1] and "**English** · Whisper (offline)" in shown[-1]
    assert last.translator == "whisper"
    # The seeded tiny model always says something (noise words) for this clip.
    assert last.swedish, "the tiny model wrote nothing: the file checks below need text"
    stem = "stockholm"
    assert [Path(f).name for f in last.files][:3] == [f"{stem}.srt", f"{stem}.vtt", f"{stem}.txt"]
    assert Path(last.files[2]).read_text(encoding="utf-8").strip() == last.text
    assert Path(last.files[1]).read_text(encoding="utf-8").startswith("WEBVTT\n\n")
    # The English as subtitles too, with the translation's own segments and times.
    from whisper_sv.infer.transcriber import subtitles

    assert last.english, "the tiny model translated nothing: the English files need text"
    assert [Path(f).name for f in last.files][3:] == [f"{stem}.en.srt", f"{stem}.en.vtt"]
    assert Path(last.files[3]).read_text(encoding="utf-8") == subtitles(last.english, "srt")
    # Each section names the model that wrote it.
    label = tiny_ct2_dir.name
    assert f"· model {label}" in shown[-1].split("**English**")[0]
    assert f"**English** · Whisper (offline) · model {label}" in shown[-1]
    chat.close()
    assert not any(Path(f).exists() for f in last.files)  # the download folder is gone


@pytest.mark.parametrize(
    "clip, reason",
    [
        ("corrupt", r"Could not read \*\*broken.wav\*\*: corrupt"),
        ("text", r"Could not read \*\*notes.txt\*\*: not audio"),
    ],
)
def test_bad_uploads_give_a_sentence_not_a_traceback(tiny_app, clips, clip, reason):
    states = list(tiny_app.run(str(clips[clip]), None, None, "whisper"))
    last = states[-1]
    assert re.search(reason, last.error)
    text = render_markdown(last)
    assert text.startswith("⚠️") and "Traceback" not in text
    import gradio as gr

    with pytest.raises(gr.Error, match=reason.replace(r"\*\*", "")):
        tiny_app.transcribe_api(str(clips[clip]))


def test_too_long_audio_is_refused(tiny_ct2_dir, clips):
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None, max_duration_s=2))
    last = list(chat.run(str(clips["speech"]), None, None, "none"))[-1]
    assert "long; the limit is 2.0 s" in last.error
    assert not last.swedish  # refused before any decoding
    # The header is read first, so a huge file is refused without decoding it all.
    assert declared_duration(str(clips["speech"])) == pytest.approx(3.6, abs=0.4)
    assert declared_duration(str(clips["corrupt"])) == 0.0


def test_unknown_model_and_empty_message_are_answered(tiny_app, clips):
    last = list(tiny_app.run(str(clips["speech"]), None, "/nowhere/model", "none"))[-1]
    assert "Unknown model" in last.error
    last = list(tiny_app.run(None, None, None, "none"))[-1]
    assert "YouTube link" in last.error


def test_chat_handler_answers_plain_text_with_help(tiny_app):
    (history, box, files, cancel), *_ = list(
        tiny_app.chat({"text": "hej!", "files": []}, [], None, "none")
    )
    assert history[-1]["role"] == "assistant" and "YouTube link" in history[-1]["content"]
    assert box is None and files["visible"] is False and cancel["visible"] is False


@pytest.mark.parametrize(
    "message", [{"text": "", "files": []}, {"text": "   \n ", "files": []}, None]
)
def test_empty_or_blank_submit_answers_with_help(tiny_app, message):
    outputs = list(tiny_app.chat(message, [], None, "none"))
    assert len(outputs) == 1
    history = outputs[0][0]
    # No user message without content: Gradio's Chatbot refuses None (the page would break).
    assert history == [{"role": "assistant", "content": app_mod.HELP}]


def test_chat_handler_keeps_history_and_clears_the_box(tiny_app, clips):
    old = [{"role": "user", "content": "tidigare"}, {"role": "assistant", "content": "svar"}]
    message = {"text": "", "files": [{"path": str(clips["speech"])}]}
    outputs = list(tiny_app.chat(message, old, str(tiny_app.options.model), "none"))
    history, box, files, cancel = outputs[-1]
    assert history[:2] == old
    assert history[2] == {"role": "user", "content": {"path": str(clips["speech"])}}
    assert history[3]["role"] == "assistant" and "**Svenska**" in history[3]["content"]
    assert box is None  # the input box is emptied from the first update on
    assert len(outputs) >= 3  # streamed: reading, loading, ..., done
    assert outputs[0][3]["visible"] is True and cancel["visible"] is False  # cancel while busy
    assert files["visible"] is (files["value"] is not None)


def test_unreachable_online_translator_is_explained_in_the_chat(tiny_ct2_dir, clips, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{free_port()}")
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None, translate_timeout_s=3))
    last = list(chat.run(str(clips["speech"]), None, None, "google"))[-1]
    if not last.swedish:
        pytest.skip("the random model heard nothing, so there was nothing to translate")
    text = render_markdown(last)
    assert "**English** · Google Translate (online)" in text
    assert "cannot reach Google Translate" in text and "offline Whisper" in text


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def media_server(clips):
    """http.server over the clips' folder; yields "127.0.0.1:PORT"."""
    handler = functools.partial(_Quiet, directory=str(clips["speech"].parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_link_on_the_allow_list_is_downloaded_and_transcribed(tiny_ct2_dir, media_server):
    options = AppOptions(
        model=str(tiny_ct2_dir), runs_dir=None, link_hosts=(*links.YOUTUBE_HOSTS, media_server)
    )
    chat = ChatApp(options)
    states = list(chat.run(None, f"http://{media_server}/stockholm.wav", None, "none"))
    assert any("Downloading the audio" in s.status for s in states)
    last = states[-1]
    assert not last.error and last.source == "stockholm"
    assert last.duration == pytest.approx(3.6, abs=0.4)
    # The same server is refused when it is not on the list.
    refused = list(
        ChatApp(AppOptions(runs_dir=None)).run(None, f"http://{media_server}/x.wav", None, "none")
    )
    assert "not accepted" in refused[-1].error


def test_subtitle_files():
    from whisper_sv.infer.transcriber import Segment, subtitles

    segments = [
        Segment(0.0, 2.5, " Hej "),
        Segment(3.5, 3661.042, "på dig"),
        Segment(4.0, 4.0, " "),
    ]
    # A cue lasts no longer than its text takes to say at 2 characters a second; the pause
    # of 1.5 s between them keeps them apart.
    assert subtitles(segments, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,000\nHej\n\n2\n00:00:03,500 --> 00:00:07,000\npå dig\n"
    )
    assert subtitles(segments, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHej\n\n00:00:03.500 --> 00:00:07.000\npå dig\n"
    )
    assert subtitles(segments, "txt") == "Hej\npå dig\n"


def test_markdown_is_escaped_and_long_audio_gets_timestamps():
    from whisper_sv.infer.transcriber import Segment

    reply = Reply(source="a_b.wav", duration=95, timestamps=True, translator="none")
    reply.swedish = [Segment(0, 4.2, "*inte fet* <b>"), Segment(61, 65, "sen")]
    text = render_markdown(reply)
    assert r"\*inte fet\* \<b\>" in text
    assert "`0:00–0:04`" in text and "`1:01–1:05` sen" in text
    assert "a\\_b.wav · 1:35" in text


def test_unsure_words_and_left_out_parts_are_shown():
    from whisper_sv.infer.transcriber import Dropped, Segment, Word

    words = (Word(0.0, 1.0, " tvättar", 0.9), Word(1.0, 2.0, " sig", 0.3))
    reply = Reply(source="a.wav", duration=2.0, translator="whisper")
    reply.swedish = [Segment(0.0, 2.0, "tvättar sig", words=words)]
    reply.english_dropped = [
        Dropped(Segment(0.0, 2.0, "Thanks for watching!"), "known_hallucination", "x")
    ]
    text = render_markdown(reply)
    assert "tvättar <u>sig</u>" in text
    assert "unsure of this word" in text  # the legend, only when a word is marked
    assert "Thanks for watching" not in text  # what was left out is not shown
    assert (
        "Left out 1 part of the English as probably invented (a phrase Whisper is known to invent)."
    ) in text
    sure = Reply(source="a.wav", duration=2.0, translator="none")
    sure.swedish = [Segment(0.0, 2.0, "tvättar", words=words[:1])]
    assert "unsure" not in render_markdown(sure) and "Left out" not in render_markdown(sure)


def test_detected_language_is_named_in_the_reply(tiny_app, clips):
    states = list(tiny_app.run(str(clips["speech"]), None, None, "none", language="auto"))
    last = states[-1]
    assert not last.error
    assert last.language != "auto" and 0.0 < last.language_probability <= 1.0
    assert any("Detecting the language" in render_markdown(s) for s in states)
    assert "sure)" in render_markdown(last).split("\n")[0]


# --------------------------------------------------------------------------- served


class CountingChatApp(ChatApp):
    """The real app, counting how many requests are inside ``run`` at once."""

    def __init__(self, options: AppOptions) -> None:
        super().__init__(options)
        self.active = self.most = self.calls = 0
        self._count_lock = threading.Lock()

    def run(self, *args, **kwargs):
        with self._count_lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            yield from super().run(*args, **kwargs)
        finally:
            with self._count_lock:
                self.active -= 1


@pytest.fixture(scope="module")
def served(tiny_ct2_dir):
    """The app launched in-process on a free port; yields (URL, app, Blocks)."""
    chat = CountingChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None, port=free_port()))
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{chat.options.port}/", chat, demo
    demo.close()
    chat.close()


def test_api_endpoint_transcribe(served, clips):
    from gradio_client import Client, handle_file

    url, chat, _ = served
    client = Client(url, verbose=False)
    assert (
        "/transcribe" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    got = client.predict(handle_file(str(clips["speech"])), api_name="/transcribe")
    assert got == chat.transcribe_api(str(clips["speech"]))
    assert got["swedish"] and got["english"] and not got["no_speech"]
    assert got["language"] == "sv" and got["model"] == got["translation_model"] != ""
    assert got["swedish_srt"].startswith("1\n00:00:") and got["swedish_vtt"].startswith("WEBVTT")
    assert got["english_srt"].startswith("1\n00:00:") and got["english_vtt"].startswith("WEBVTT")
    only = client.predict(
        handle_file(str(clips["speech"])), task="transcribe", api_name="/transcribe"
    )
    assert only["swedish"] == got["swedish"] and only["english"] == only["english_srt"] == ""


def test_api_initial_prompt_reaches_the_decoder_and_its_limit_is_one_sentence(served, clips):
    from gradio_client import Client, handle_file

    url, _, _ = served
    client = Client(url, verbose=False)
    clip = handle_file(str(clips["speech"]))
    plain = client.predict(clip, task="transcribe", api_name="/transcribe")
    prompted = client.predict(
        clip, task="transcribe", initial_prompt="Budapäst, Mjölck.", api_name="/transcribe"
    )
    # The random tiny model writes other text after other prompt tokens; a blank prompt is none.
    assert prompted["swedish"] and prompted["swedish"] != plain["swedish"]
    blank = client.predict(clip, task="transcribe", initial_prompt="  ", api_name="/transcribe")
    assert blank == plain
    long = " ".join(["ord"] * 300)
    answer = _client_answer(
        lambda: client.predict(clip, initial_prompt=long, api_name="/transcribe")
    )
    print(f"prompt too long: {answer}")
    assert "initial_prompt is 300 tokens; Whisper takes at most 223" in answer["error"]


def _api_answer(chat: ChatApp, clip: Path) -> dict:
    """What ``/transcribe`` answers for ``clip``, straight from the handler: its result, or
    ``{"error": sentence}`` where the client raises."""
    import gradio as gr

    try:
        return chat.transcribe_api(str(clip))
    except gr.Error as err:
        return {"error": err.message}


def _client_answer(call) -> dict:
    """``call()``'s result, or ``{"error": sentence}`` when the client raises the app's error
    or Gradio's "queue full"."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    try:
        return call()
    except (AppError, QueueError) as err:  # QueueError: the queue is full
        return {"error": str(err)}


@pytest.fixture(scope="module")
def strict(tiny_ct2_dir):
    """The app launched with tight limits: 3 s of audio, one request at a time, one waiting."""
    options = AppOptions(
        model=str(tiny_ct2_dir),
        runs_dir=None,
        port=free_port(),
        max_duration_s=3.0,
        concurrency_limit=1,
        max_queue=1,
    )
    chat = ChatApp(options)
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{options.port}/"
    demo.close()
    chat.close()


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("corrupt", "Could not read broken.wav: corrupt"),
        ("text", "Could not read notes.txt: not audio"),
        ("url", NOT_UPLOADED),
        ("speech", "stockholm.wav is 3.6 s long; the limit is 3.0 s. Send a shorter recording."),
        ("language", "Value: xx is not in the list of choices"),
        ("model", "Unknown model '/no/such/model'; pick one from the list."),
    ],
)
def test_api_failures_raise_their_sentence_in_gradio_client(strict, clips, case, said):
    from gradio_client import Client, handle_file

    client = Client(strict, verbose=False)
    file = handle_file(str(clips.get(case, clips["speech2"])))
    if case == "url":
        file = {"path": "https://example.com/clip.wav", "meta": {"_type": "gradio.FileData"}}
    choices = {"language": "xx"} if case == "language" else {}
    choices |= {"model": "/no/such/model"} if case == "model" else {}
    answer = _client_answer(lambda: client.predict(file, **choices, api_name="/transcribe"))
    print(f"{case}: {answer}")  # the closing figures of issue 21
    assert said in answer["error"] and "Traceback" not in answer["error"]


def test_api_queue_full_raises_in_gradio_client(strict, clips):
    from gradio_client import Client, handle_file

    client = Client(strict, verbose=False)
    jobs = [
        client.submit(handle_file(str(clips["speech2"])), api_name="/transcribe") for _ in range(8)
    ]
    answers = [_client_answer(lambda job=job: job.result(timeout=120)) for job in jobs]
    errors = {a["error"] for a in answers if "error" in a}
    print(f"queue full: {errors}")
    assert any("queue is full" in e.lower() for e in errors), answers
    assert any("swedish" in a for a in answers)  # those admitted were answered


def test_api_no_speech_is_an_answer_not_an_error(strict, clips, gradio_folder):
    from gradio_client import Client, handle_file

    silence = gradio_folder / "silence.wav"
    sf.write(silence, np.zeros(32_000, dtype="float32"), 16_000)
    got = Client(strict, verbose=False).predict(handle_file(str(silence)), api_name="/transcribe")
    assert got["no_speech"] is True and got["swedish"] == got["english"] == got["swedish_srt"] == ""
    assert got["language"] == "sv" and got["model"]


def test_five_concurrent_requests_all_complete_correctly(served, clips):
    from gradio_client import Client, handle_file

    url, chat, _ = served
    order = ["speech", "speech2", "corrupt", "speech", "speech2"]
    expected = {name: _api_answer(chat, clips[name]) for name in set(order)}
    client = Client(url, verbose=False)
    start = time.monotonic()
    jobs = [client.submit(handle_file(str(clips[n])), api_name="/transcribe") for n in order]
    results = [_client_answer(lambda job=job: job.result(timeout=120)) for job in jobs]
    assert results == [expected[n] for n in order]
    assert time.monotonic() - start < 120
    chat.most = 0
    # And from five separate clients (five users) at once.
    with ThreadPoolExecutor(5) as pool:
        futures = [
            pool.submit(
                lambda n: _client_answer(
                    lambda: Client(url, verbose=False).predict(
                        handle_file(str(clips[n])), api_name="/transcribe"
                    )
                ),
                n,
            )
            for n in order
        ]
        assert [f.result(timeout=120) for f in futures] == [expected[n] for n in order]
    # Queued, not all at once: never more than the concurrency limit in flight.
    assert 1 <= chat.most <= chat.options.concurrency_limit


def test_queue_and_upload_limits_are_set(served):
    import httpx

    url, chat, demo = served
    config = httpx.get(url + "config", timeout=120).json()  # a loaded CPU answers late
    assert config["max_file_size"] == 200 * 1024 * 1024  # "200mb", enforced by Gradio
    decoding = {f.api_name: f for f in demo.fns.values() if f.concurrency_id == "decode"}
    assert "transcribe" in decoding and len(decoding) == 2  # the chat and the API share one limit
    assert {f.concurrency_limit for f in decoding.values()} == {chat.options.concurrency_limit}
    assert demo._queue.max_size == chat.options.max_queue


def test_uploads_over_the_size_limit_are_refused(tiny_ct2_dir, clips):
    from gradio_client import Client, handle_file

    chat = ChatApp(
        AppOptions(model=str(tiny_ct2_dir), runs_dir=None, port=free_port(), max_file_size="20kb")
    )
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{chat.options.port}/", verbose=False)
        assert clips["speech"].stat().st_size > 20 * 1024
        with pytest.raises(ValueError, match="exceeds the maximum file size of 20480 bytes"):
            client.predict(handle_file(str(clips["speech"])), api_name="/transcribe")
    finally:
        demo.close()
        chat.close()


# --------------------------------------------------------------------------- nothing left behind


def _start_cli_app(model: Path, tmp: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``whisper-sv app`` in a real process whose temporary folder is ``tmp``; (process, URL)
    once it answers. Its output goes to the file ``log``: a pipe nobody reads while it serves
    fills up, and the app then blocks on its next log line (its shutdown message included)."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)  # the app's own choice, not this module's fixture
    cmd = [sys.executable, "-m", "whisper_sv", "app", "--model", str(model), "--port", str(port)]
    with open(log, "wb") as out:
        # Ctrl+C as a terminal sends it: a test run started in the background of a script
        # inherits SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
    while True:
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(log.read_text(errors="replace")) from None
            time.sleep(1)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_stopped_app_leaves_no_file_of_a_transcription(tiny_ct2_dir, clips, tmp_path, stop):
    import stat

    from gradio_client import Client, handle_file

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "app.log"
    proc, url = _start_cli_app(tiny_ct2_dir, tmp, log)
    try:
        result = Client(url, verbose=False).predict(
            handle_file(str(clips["speech"])), api_name="/transcribe"
        )
        assert result
        # While serving: the upload sits in the app's private folder, owner-only.
        (private,) = tmp.glob("whisper-sv-gradio-*")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        kept = [p for p in private.rglob("*") if p.is_file() and p.name == "stockholm.wav"]
        assert kept and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    finally:
        proc.send_signal(getattr(signal, stop))
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the app did not stop: {log.read_text()[-3000:]}") from None
    # The exit statuses the CLI documents: 130 Ctrl+C, 143 SIGTERM.
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[stop], log.read_text()[-3000:]
    # onnxruntime (faster-whisper's VAD) keeps `.ses` in $TMPDIR: a time and a random id.
    left = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != ".ses"]
    assert left == [], left
    assert not any(b"RIFF" in p.read_bytes() for p in tmp.rglob(".ses"))


def test_serve_removes_its_folder_when_startup_fails(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = os.environ.get("GRADIO_TEMP_DIR")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            app_mod.serve(AppOptions(runs_dir=None, port=taken.getsockname()[1]))
    assert list(tmp_path.iterdir()) == []  # neither Gradio's folder nor the downloads
    assert os.environ.get("GRADIO_TEMP_DIR") == before


def test_upload_budget_counts_files_and_bytes_per_client_an_hour():
    from whisper_sv.app.budget import UploadBudget

    budget = UploadBudget(count=2, megabytes=1.0)
    assert budget.refusal("10.0.0.1", 400_000, now=0.0) == ""
    assert budget.refusal("10.0.0.1", 400_000, now=10.0) == ""
    assert "try again in about 60 min" in budget.refusal("10.0.0.1", 1, now=20.0)  # 3rd file
    assert budget.refusal("10.0.0.2", 900_000, now=20.0) == ""  # another client: its own
    assert "1 MB an hour" in budget.refusal("10.0.0.2", 200_000, now=30.0)  # bytes
    assert budget.refusal("10.0.0.1", 1, now=3_601.0) == ""  # an hour later: the first went
    with pytest.raises(ValueError, match="count >= 1"):
        UploadBudget(count=0, megabytes=1.0)


def test_upload_endpoint_refuses_a_client_beyond_its_budget(tiny_ct2_dir, clips):
    import httpx
    from gradio_client import Client, handle_file

    options = AppOptions(
        model=str(tiny_ct2_dir),
        runs_dir=None,
        port=free_port(),
        uploads_per_hour=2,
        budget_on_loopback=True,  # as if bound beyond loopback: the test stays on 127.0.0.1
    )
    chat = ChatApp(options)
    demo = chat.launch(prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{options.port}/"
        sent = [
            httpx.post(
                url + "gradio_api/upload",
                files={"files": ("a.wav", clips["speech"].read_bytes())},
                timeout=120,
            )
            for _ in range(3)
        ]
        assert [r.status_code for r in sent] == [200, 200, 429]
        assert "Upload budget used up (2 files" in sent[2].text
        with pytest.raises(Exception, match="429"):  # the client cannot upload either
            Client(url, verbose=False).predict(
                handle_file(str(clips["speech"])), api_name="/transcribe"
            )
    finally:
        demo.close()
        chat.close()


# --------------------------------------------------------------------------- path safety


def _files_under(folder: Path) -> dict[str, bytes]:
    """Every non-empty file under ``folder`` (Gradio keeps empty scratch files there)."""
    files = (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return {str(p): data for p in files if (data := p.read_bytes())}


@pytest.fixture
def secret(tmp_path, clips, gradio_folder):
    """A server file nobody uploaded (real speech), and a symlink to it in the upload folder."""
    path = tmp_path / "secret.wav"
    path.write_bytes(clips["speech"].read_bytes() + b"SECRET-MARK")
    link = gradio_folder / "link.wav"
    link.symlink_to(path)
    yield path, link
    link.unlink()


def _crafted(secret_path: Path, link: Path, gradio_folder: Path) -> list[str]:
    return [
        str(secret_path),  # absolute, outside
        "/etc/passwd",
        "/no/such/file.wav",  # missing: refused with the very same words (no oracle)
        f"{gradio_folder}/clips/../{os.path.relpath(secret_path, gradio_folder)}",  # ..
        os.path.relpath(secret_path),  # relative
        str(link),  # a symlink inside the upload folder, pointing out
        str(gradio_folder),  # the folder itself
    ]


def test_handlers_refuse_paths_that_were_not_uploaded(tiny_app, secret, gradio_folder):
    secret_path, link = secret
    before = _files_under(gradio_folder)
    answers = set()
    for path in _crafted(secret_path, link, gradio_folder):
        reason = _api_answer(tiny_app, path)["error"]
        assert reason.startswith("Only files uploaded to this app are accepted")
        answers.add(reason)
        outputs = list(tiny_app.chat({"text": "", "files": [{"path": path}]}, [], None, "none"))
        assert len(outputs) == 1  # answered at once: nothing was read
        assert outputs[0][0][-1]["content"] == f"⚠️ {reason}"
    assert len(answers) == 1  # one answer whether the file exists or not
    assert _files_under(gradio_folder) == before  # nothing copied in


def _raw_call(url: str, api: str, data: list) -> str:
    """One call of a Gradio endpoint over plain HTTP (what any client can send)."""
    import httpx

    posted = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=120)
    event = posted.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api}/{event}", timeout=120).text


def test_crafted_file_data_over_http_is_refused_and_nothing_copied(served, secret, gradio_folder):
    url, chat, _ = served
    secret_path, link = secret
    calls, before = chat.calls, _files_under(gradio_folder)
    for path in _crafted(secret_path, link, gradio_folder):
        data = {"path": path, "meta": {"_type": "gradio.FileData"}}
        answer = _raw_call(url, "transcribe", [data, None, None, None, None, None, None])
        # Gradio refuses it (event: error) or the app does; never a transcript.
        # Gradio refuses it, or the app does: either way a sentence, never a transcript.
        said = ("not uploaded by a user", NOT_UPLOADED)
        assert "event: error" in answer and any(s in answer for s in said), answer
    assert chat.calls == calls  # no request reached the decoder
    after = _files_under(gradio_folder)
    assert after == before  # no copy of any crafted path in Gradio's cache
    assert not any(b"SECRET-MARK" in content for content in after.values())


def test_gradio_client_file_data_with_a_url_reaches_no_local_server(served, gradio_folder):
    from gradio_client import Client

    url, chat, _ = served
    hits: list[str] = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before, calls = _files_under(gradio_folder), chat.calls
    try:
        client = Client(url, verbose=False)
        target = f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/clip.wav"
        for data in (
            {"path": target, "meta": {"_type": "gradio.FileData"}},
            {"path": target, "url": target, "meta": {"_type": "gradio.FileData"}},
        ):
            answer = _client_answer(lambda data=data: client.predict(data, api_name="/transcribe"))
            assert answer == {"error": NOT_UPLOADED}
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []  # the server never fetched the URL
    assert chat.calls == calls and _files_under(gradio_folder) == before


# --------------------------------------------------------------------------- CLI and Space


def test_cli_app_parses_and_refuses_a_bad_model(capsys):
    args = cli.build_parser().parse_args(
        ["app", "--port", "7999", "--allow-host", "127.0.0.1:8000", "--translator", "none"]
    )
    assert (args.host, args.port, args.link_hosts, args.translator) == (
        "127.0.0.1",
        7999,
        (*links.YOUTUBE_HOSTS, "127.0.0.1:8000"),
        "none",
    )
    options = cli.options_from(AppOptions, args)
    assert options.link_hosts[-1] == "127.0.0.1:8000" and options.runs_dir == ("runs", "demo-out")
    runs = cli.build_parser().parse_args(["app", "--runs", "a", "--runs", "b"]).runs_dir
    assert runs == ("a", "b")  # given: replaces the default folders
    assert cli.main(["app", "--model", "/no/such/model"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--allow-host", "http://evil/x"], "'http://evil/x' is not a host name"),
        (["--allow-host", "evil/x"], "'evil/x' is not a host name"),
        (["--allow-host", "media.example.org:0"], "the port must be 1-65535"),
        (["--runs", "/no/such/runs"], "--runs /no/such/runs: no such folder"),
    ],
)
def test_cli_app_refuses_bad_hosts_and_missing_runs_in_one_line(tiny_ct2_dir, capsys, args, said):
    assert cli.main(["app", "--model", str(tiny_ct2_dir), "--port", str(free_port()), *args]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err  # one line, no traceback, nothing served


@pytest.fixture(scope="module")
def space(tiny_ct2_dir, tmp_path_factory) -> Path:
    """A Space folder exported through the CLI for the tiny model."""
    out = tmp_path_factory.mktemp("export") / "space"
    assert cli.main(["app", "--model", str(tiny_ct2_dir), "--export-space", str(out)]) == 0
    return out


def test_export_space_writes_a_complete_folder(space, tiny_ct2_dir):
    out = space
    readme = (out / "README.md").read_text(encoding="utf-8")
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    assert re.search(r"sdk_version: \d+\.\d+\.\d+", front)
    reqs = (out / "requirements.txt").read_text().split()
    assert any(r.startswith("gradio==") for r in reqs) and any("faster-whisper" in r for r in reqs)
    assert (out / "model" / "model.bin").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert (out / "whisper_sv" / "app" / "chat.py").is_file()
    with pytest.raises(ValueError, match="not empty"):
        app_mod.export_space(out, AppOptions(model=str(tiny_ct2_dir)))
    app_py = (out / "app.py").read_text(encoding="utf-8")
    assert "max_duration_s=3600.0" in app_py and "runs_dir=None" in app_py
    compile(app_py, "app.py", "exec")


@pytest.mark.slow  # starts a second Python with gradio: ~10 s on an idle machine
def test_exported_space_serves_with_python_app_py(space, tiny_ct2_dir, clips):
    from gradio_client import Client, handle_file

    out = space
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": ""}
    # `python app.py`, with torch and transformers made unimportable: the Space's
    # requirements.txt leaves them out, so serving must not need them.
    run_app = (
        "import runpy, sys; sys.modules.update(torch=None, transformers=None); "
        "runpy.run_path('app.py', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", run_app],
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()  # before reading: a live process's pipe never ends
                    said = proc.stdout.read().decode(errors="replace")
                    raise AssertionError(f"`python app.py` did not serve in 90 s: {said}") from None
                time.sleep(1)
        got = client.predict(handle_file(str(clips["speech"])), api_name="/transcribe")
        # The exported copy gives what the installed package gives for the same model.
        expected = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None)).transcribe_api(
            str(clips["speech"])
        )
        # The same answer; only the model's label differs (the Space's folder is "model").
        labels = ("model", "translation_model")
        assert {k: v for k, v in got.items() if k not in labels} == {
            k: v for k, v in expected.items() if k not in labels
        }
        assert got["model"] == "model"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("`python app.py` did not stop 120 s after SIGTERM") from None


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_bundled_model_transcribes_swedish_and_drops_an_invented_outro(gradio_folder):
    # In the upload folder: the API handler accepts nothing else.
    clip = speak(gradio_folder / "imorgon.wav", "Vi ses i morgon på jobbet.", "sv+m3")
    chat = ChatApp(AppOptions(runs_dir=None))
    got = chat.transcribe_api(str(clip))
    # The CPU's kernels (AVX2 or AVX512) move one word: "morgon" is "mottom" under AVX2 on
    # an AMD EPYC. The rest of the sentence is read the same on every CPU.
    assert wer(["Vi ses i morgon på jobbet."], [got["swedish"]]) <= 100 / 6, got["swedish"]
    assert got["swedish"].startswith("Vi ses i ") and got["swedish"].endswith(" på jobbet.")
    # Whisper base's English for this sentence is the YouTube outro "See you next time!": the
    # speech guard drops it, so no invented English is shown, and the reply says so.
    assert "next time" not in got["english"].lower()
    last = list(chat.run(str(clip), None, chat.options.model, "whisper"))[-1]
    assert [(d.reason, d.segment.text) for d in last.english_dropped] == [
        ("known_hallucination", "See you next time!")
    ]
    assert "Left out 1 part of the English" in render_markdown(last)
    chat.close()


@pytest.mark.slow
def test_bundled_model_on_a_real_recording(sv_words_dir):
    chat = ChatApp(AppOptions(runs_dir=None, translator="none"))
    last = list(chat.run(str(sv_words_dir / "food__apple.mp3"), None, None, "none"))[-1]
    assert not last.error and last.text.strip()
    assert np.isclose(last.duration, 1.9, atol=1.5)


def test_cancel_marks_a_running_reply_only(tiny_app):
    running = "**Svenska** · a.wav\n\n…\n\n*⏳ Transcribing… 40% (0:02 of 0:05)*"
    # As the page sends the history back: content as a list of text parts.
    history = [
        {"role": "user", "content": [{"type": "text", "text": "https://youtu.be/x"}]},
        {"role": "assistant", "content": [{"type": "text", "text": running}]},
    ]
    shown, button = tiny_app.cancelled(history)
    assert shown[-1]["content"] == "**Svenska** · a.wav\n\n…\n\n*⏹️ Cancelled.*"
    assert shown[0] == history[0] and button["visible"] is False
    done = [{"role": "assistant", "content": "**Svenska** · a.wav\n\nHej"}]
    assert tiny_app.cancelled(done)[0] == done  # a finished reply is left as it is


def test_cancel_frees_the_app_at_once_even_on_a_one_byte_a_second_link(
    tiny_ct2_dir, clips, trickle
):
    """Cancel stops the job's download (not only its reply): the chat handler ends within
    2 s, the server sees the connection closed, and the next job is answered."""
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None, link_hosts=(trickle.host,)))
    link = f"http://{trickle.host}/slow.wav"
    states: list = []
    job = threading.Thread(
        target=lambda: states.extend(chat.chat(link, [], None, "none", page="p1")), daemon=True
    )
    job.start()
    assert trickle.started.wait(60), "the link's download never reached the local server"
    start = time.monotonic()
    shown, _ = chat.cancelled([{"role": "assistant", "content": "x\n\n*⏳ Downloading*"}], "p1")
    assert "Cancelled" in shown[-1]["content"]
    job.join(10)
    took = time.monotonic() - start
    assert not job.is_alive(), "the cancelled job was still running 10 s after Cancel"
    assert took < 2, f"the cancelled job ended {took:.1f} s after Cancel (the bound is 2 s)"
    last = states[-1][0][-1]["content"]
    assert last.endswith("*⏹️ Cancelled.*") and "⏳" not in last, last
    assert states[-1][3]["visible"] is False  # the Cancel button goes with the job
    assert trickle.gone.wait(10), "the download went on after Cancel: the server still sends"
    # The next job of the same page runs and is answered; Cancel without a job is harmless.
    chat.cancelled([], "p1")
    after = list(chat.chat({"files": [str(clips["speech"])]}, [], None, "none", page="p1"))
    assert "**Svenska** · stockholm.wav" in after[-1][0][-1]["content"]
    chat.close()


def test_a_cancelled_request_stops_between_segments(tiny_ct2_dir, clips):
    """Cancelled while transcribing: no segment after the cancel, and the reply says so."""
    chat = ChatApp(AppOptions(model=str(tiny_ct2_dir), runs_dir=None))
    cancel = threading.Event()
    states = []
    for state in chat.run(str(clips["speech"]), None, None, "whisper", cancel=cancel):
        states.append(state)
        if state.status.startswith("Transcribing"):
            cancel.set()
    last = states[-1]
    assert last.cancelled and not last.status and not last.files and not last.english
    assert all(not s.english for s in states)  # the translation never started
    assert "\n\n*⏹️ Cancelled.*" in render_markdown(last)
    chat.close()


def test_a_run_not_checked_on_translation_translates_with_its_start_model(
    tmp_path, tiny_ct2_dir, tiny_model_dir, clips
):
    """A run folder whose guards never checked the translate task: the English comes from the
    model it started from, and the reply names that model and says why."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "best")
    shutil.copytree(tiny_ct2_dir, run / "ct2")
    train = {"guards": [{"name": "words", "path": "w.tsv", "translate": False}]}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_ct2_dir), "train": train}))
    chat = ChatApp(AppOptions(model=str(run), runs_dir=None))
    last = list(chat.run(str(clips["speech"]), None, str(run), "whisper"))[-1]
    assert not last.error and last.english
    assert last.model == chat.model_label(str(run))
    assert last.translation_model == chat.model_label(str(tiny_ct2_dir)) != last.model
    shown = render_markdown(last)
    assert "not checked on translation" in shown and "translate: true" in shown
    # Guarded for translation: the run translates itself.
    train["guards"][0]["translate"] = True
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_ct2_dir), "train": train}))
    last = list(chat.run(str(clips["speech"]), None, str(run), "whisper"))[-1]
    assert last.translation_model == last.model and not last.translation_note
    chat.close()


def test_cli_translate_with_an_unchecked_run_uses_its_start_model(
    tmp_path, tiny_ct2_dir, tiny_model_dir, clips, capsys
):
    import shutil

    import yaml

    from whisper_sv.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "best")
    shutil.copytree(tiny_ct2_dir, run / "ct2")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_ct2_dir), "train": {}}))
    args = ["transcribe", "--model", str(run), "--task", "translate", str(clips["speech"])]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"note: English by {tiny_ct2_dir}" in err and "not checked on translation" in err


def test_cli_app_says_when_its_runs_folders_hold_no_run(tiny_ct2_dir, capsys, tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    out = tmp_path / "space"
    args = ["app", "--model", str(tiny_ct2_dir), "--runs", str(empty), "--export-space", str(out)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"no run found in {empty.resolve()}" in err and "--runs DIR" in err
