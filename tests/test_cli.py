"""The command line: help texts, exit codes, one-line errors, JSON output, SIGTERM cleanup.

Commands run in-process through ``cli.main`` (real parsing, real models: the tiny random
Whisper), and the app once as a real ``python -m whisper_sv app`` process for SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.cli import main as cli

SRC = Path(__file__).resolve().parents[1] / "src"


def _wav(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(path, tone.astype(np.float32), 16_000)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_has_help_and_shows_its_default(name):
    command = _subcommands()[name]
    formatter = command._get_formatter()
    for action in command._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help text"
        shown = formatter._get_help_string(action) % {"default": action.default}
        if action.default not in (None, False, [], ""):
            value = action.default
            value = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            assert f"(default: {value})" in shown, f"{name} {action.option_strings[0]}: {shown}"
        assert shown.count("default") <= 1 or "(default: " in action.help, shown
    text = command.format_help()
    assert "exit status:" in text and "  2    bad usage" in text


def test_main_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "0    done" in out and "1    some inputs failed" in out and "143  terminated" in out


# --------------------------------------------------------------------------- flags = options


def _option_classes() -> dict[str, type]:
    from whisper_sv.app.chat import AppOptions
    from whisper_sv.infer.transcriber import TranscribeOptions
    from whisper_sv.workflows.demo import DemoOptions

    return {"transcribe": TranscribeOptions, "app": AppOptions, "demo": DemoOptions}


@pytest.mark.parametrize("name", ["transcribe", "app", "demo"])
def test_every_option_field_has_its_flag_with_the_same_default(name):
    import dataclasses
    import typing

    cls = _option_classes()[name]
    actions = {a.dest: a for a in _subcommands()[name]._actions}
    comments = cli.field_comments(cls)
    for field in dataclasses.fields(cls):
        assert field.name in actions, f"{name}: no flag for {cls.__name__}.{field.name}"
        action = actions[field.name]
        assert action.default == field.default, (name, field.name)
        assert action.help and comments[field.name], (name, field.name)
        hint = typing.get_type_hints(cls)[field.name]
        if typing.get_origin(hint) is typing.Literal:
            assert tuple(action.choices) == typing.get_args(hint)
    # Parsing no flags gives the dataclass's defaults.
    required = {"transcribe": ["x.wav"], "app": [], "demo": []}[name]
    args = cli.build_parser().parse_args([name, *required])
    assert cli.options_from(cls, args) == cls()


def test_field_comments_are_the_help():
    from whisper_sv.app.chat import AppOptions

    comments = cli.field_comments(AppOptions)
    assert comments["port"] == "TCP port"
    assert comments["runs_dir"].startswith("Folders whose runs the model picker lists")  # above
    app = _subcommands()["app"]
    assert next(a for a in app._actions if a.dest == "max_queue").help == comments["max_queue"]


# --------------------------------------------------------------------------- one-line errors


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.skipif(
    __import__("ctranslate2").get_cuda_device_count() > 0, reason="this machine has CUDA"
)
def test_device_cuda_without_cuda(tmp_path, capsys, tiny_ct2_dir):
    clip = _wav(tmp_path / "a.wav")
    for command in (
        ["transcribe", "--model", str(tiny_ct2_dir), "--device", "cuda", str(clip)],
        ["evaluate", "--model", str(tiny_ct2_dir), "--device", "cuda", "--manifest", "x.tsv"],
    ):
        if command[0] == "evaluate":
            (tmp_path / "m.tsv").write_text(f"path\tsentence\n{clip}\thej\n", encoding="utf-8")
            command[-1] = str(tmp_path / "m.tsv")
        assert cli.main(command) == 2
        assert "--device cuda: no CUDA device found here; use --device cpu" in _one_line_error(
            capsys
        )


def test_taken_port_is_a_one_line_error(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = cli.main(["app", "--runs", str(tmp_path), "--port", str(port)])
    assert rc == 2
    line = _one_line_error(capsys)
    assert f"cannot serve on 127.0.0.1:{port}" in line and "--port N" in line


def test_bad_file_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["app", "--max-file-size", "lots"])
    assert stop.value.code == 2
    line = _one_line_error(capsys)
    assert "--max-file-size: 'lots' is not a size" in line and "200mb" in line
    assert "invalid literal" not in line


def test_mistyped_relative_model_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "my-run").mkdir(parents=True)
    clip = _wav(tmp_path / "a.wav")
    assert cli.main(["transcribe", "--model", "runs/my-runn", str(clip)]) == 2
    line = _one_line_error(capsys)
    assert "no such folder: 'runs/my-runn'" in line and "hub" not in line.lower()


def test_failed_inputs_exit_1_and_the_rest_are_done(capsys, tmp_path, tiny_ct2_dir):
    good = _wav(tmp_path / "good.wav")
    rc = cli.main(["transcribe", "--model", str(tiny_ct2_dir), str(good), str(tmp_path / "no.wav")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 of 2 input(s) failed" in err and "Traceback" not in err


# --------------------------------------------------------------------------- outputs


def test_json_for_several_files_is_one_array(capsys, tmp_path, tiny_ct2_dir):
    clips = [_wav(tmp_path / f"{n}.wav", 1.0, i) for i, n in enumerate(("one", "two"))]
    args = ["transcribe", "--model", str(tiny_ct2_dir), "--format", "json"]
    assert cli.main([*args, *map(str, clips)]) == 0
    documents = json.loads(capsys.readouterr().out)  # valid JSON: one array
    assert isinstance(documents, list) and len(documents) == 2
    assert [Path(d["source"]).name for d in documents] == ["one.wav", "two.wav"]
    assert cli.main([*args, str(clips[0])]) == 0  # one file: the document itself
    assert isinstance(json.loads(capsys.readouterr().out), dict)


@pytest.mark.parametrize("flag", ["--out", "--output-dir"])
def test_out_and_its_old_name(flag, tmp_path, tiny_ct2_dir):
    clip = _wav(tmp_path / "clip.wav")
    args = [
        "transcribe",
        "--model",
        str(tiny_ct2_dir),
        "--format",
        "srt",
        flag,
        str(tmp_path / "o"),
    ]
    assert cli.main([*args, str(clip)]) == 0
    assert (tmp_path / "o" / "clip.srt").is_file()


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_removes_the_apps_transcripts(tmp_path, tiny_ct2_dir):
    """A real app process: one request leaves transcripts; SIGTERM removes them and exits 143."""
    from gradio_client import Client, handle_file

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    command = [sys.executable, "-m", "whisper_sv", "app", "--model", str(tiny_ct2_dir)]
    command += ["--runs", str(tmp_path), "--port", str(port), "--translator", "none"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode(errors="replace")) from None
                time.sleep(1)
        got = client.predict(handle_file(str(_wav(tmp_path / "a.wav"))), api_name="/transcribe")
        text = got["swedish"]
        written = list(scratch.glob("whisper-sv-app-*/*/*.srt"))
        assert written, f"no transcript files written (transcript {text!r})"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(f.exists() for f in written)
    assert list(scratch.glob("whisper-sv-app-*")) == []


# --------------------------------------------------------------------------- engine and storage flags


def test_features_engine_flags_reach_build_options():
    from whisper_sv.data.features import BuildOptions

    parse = cli.build_parser().parse_args
    args = parse(["features", "--out", "s", "--engine", "ray", "--ray-address", "ray://h:10001"])
    options = cli._build_options(args)
    assert (options.engine, options.ray_address) == ("ray", "ray://h:10001")
    default = cli._build_options(parse(["features", "--out", "s"]))
    assert (default.engine, default.ray_address) == (BuildOptions.engine, None) == ("local", None)


def test_tune_storage_flags_reach_tune_options():
    from whisper_sv.tune.study import TuneOptions

    parse = cli.build_parser().parse_args
    need = ["tune", "--features", "f", "--space", "s.yaml", "--out", "o"]
    args = parse([*need, "--storage", "sqlite:///t.db", "--worker", "--heartbeat", "7"])
    options = cli._tune_options(args)
    assert (options.storage, options.worker, options.heartbeat_s) == ("sqlite:///t.db", True, 7)
    default = cli._tune_options(parse(need))
    fields = ("storage", "worker", "heartbeat_s")
    assert [getattr(default, f) for f in fields] == [getattr(TuneOptions(), f) for f in fields]


def test_bad_engine_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["features", "--out", "s", "--engine", "spark"])
    assert stop.value.code == 2
    line = _one_line_error(capsys)
    assert "--engine" in line and "'spark'" in line and "'local', 'ray'" in line


def test_ray_address_without_ray_engine_and_bad_heartbeat_are_one_line_errors(capsys, tmp_path):
    out = str(tmp_path / "store")
    assert cli.main(["features", "--out", out, "--ray-address", "auto"]) == 2
    assert "ray_address needs engine 'ray' (--engine ray)" in _one_line_error(capsys)
    assert not (tmp_path / "store").exists()
    tune = ["tune", "--features", out, "--space", "s.yaml", "--out", str(tmp_path / "study")]
    assert cli.main([*tune, "--heartbeat", "0"]) == 2
    assert "heartbeat_s must be >= 1 (got 0)" in _one_line_error(capsys)
