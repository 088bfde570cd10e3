"""The command line: help texts, exit codes, one-line errors, JSON output, SIGTERM cleanup.

Commands run in-process through ``cli.main`` (real parsing, real models: the tiny random
Whisper), and the app once as a real ``python -m whisper_sv app`` process for SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import typing
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

# The arguments each command needs before it parses (fake paths: nothing is run).
REQUIRED = {
    "transcribe": ["x.wav"],
    "evaluate": ["--manifest", "m.tsv"],
    "features": [],
    "train": ["--features", "f", "--out", "o"],
    "export": ["run"],
    "demo": [],
    "pipeline": ["--config", "p.yaml"],
    "app": [],
    "live": ["x.wav"],
    "tune": ["--features", "f", "--space", "s.yaml", "--out", "o"],
    "average": ["run", "--out", "o"],
    "experiment": ["voices"],
}


def test_every_command_is_covered():
    assert set(_subcommands()) == set(REQUIRED) == set(_option_classes())


def _help_entries(name: str, capsys) -> dict[str, str]:
    """The printed ``whisper-sv NAME --help``: each option's entry (flags and help on one
    line, spaces normalised) by its first flag."""
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text and "  2    bad usage" in text
    options = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    for line in options.splitlines():
        if line.startswith("  -"):
            key = line.split()[0].rstrip(",")
            entries[key] = line.strip()
        else:
            entries[key] += " " + line.strip()
    return entries


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_help_shows_every_default_in_words(name, capsys):
    entries = _help_entries(name, capsys)
    for action in _subcommands()[name]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        entry = entries[flag]
        assert action.help, f"{name} {flag} has no help text"
        assert "(default: True)" not in entry and "(default: False)" not in entry, entry
        if action.required:
            continue
        if isinstance(action.default, bool):  # a switch: on or off, and how to change it
            state = "on by default" if action.default else "off by default"
            said = f"{state};{action.option_strings[-1]}turnsit"
            assert said.replace(" ", "") in entry.replace(" ", ""), entry  # wrapped at "-"
        elif action.default is None:  # the help says what happens without it
            assert "not given" in entry or "None" in entry, entry
        else:
            words = cli.default_words(action).replace("%%", "%")
            assert f"({words})".replace(" ", "") in entry.replace(" ", ""), entry
            assert words.startswith("default: ") and entry.count("(default: ") == 1, entry


_RANGE = re.compile(
    r"\b(?P<lo>-?\d+(?:\.\d+)?)-(?P<hi>\d+(?:\.\d+)?)\b"
    r"|between (?P<lo2>-?\d+(?:\.\d+)?) and (?P<hi2>-?\d+(?:\.\d+)?)"
    r"|<= (?P<max>-?\d+(?:\.\d+)?)"
)


def _ranges() -> list[tuple[str, str, str, float | None, float | None]]:
    """(command, flag, field, low, high) of every numeric range a field flag's help states."""
    found = []
    for name, cls in _option_classes().items():
        if cls is None:
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        for action in _subcommands()[name]._actions:
            if action.dest not in fields or action.type not in (int, float):
                continue
            for m in _RANGE.finditer(action.help):
                lo, hi = m["lo"] or m["lo2"], m["hi"] or m["hi2"] or m["max"]
                low = float(lo) if lo is not None else None
                found.append((name, action.option_strings[0], action.dest, low, float(hi)))
    return found


def test_numeric_ranges_in_help_agree_with_the_errors():
    ranges = _ranges()
    stated = {(name, field) for name, _, field, _, _ in ranges}
    assert {("transcribe", "max_new_tokens"), ("transcribe", "temperature"), ("app", "port")} <= (
        stated
    )
    for name, flag, field, low, high in ranges:
        cls = _option_classes()[name]
        action = next(a for a in _subcommands()[name]._actions if a.dest == field)
        step = 1 if action.type is int else 0.01

        def parse(value, name=name, flag=flag, cls=cls, action=action, field=field):
            text = str(action.type(value))
            args = cli.build_parser().parse_args([name, *REQUIRED[name], flag, text])
            return getattr(cli.options_from(cls, args), field)

        for bound in (low, high):
            if bound is not None:
                assert parse(bound) == action.type(bound), (name, flag, bound)
        outside = [high + step] + ([low - step] if low is not None else [])
        for value in outside:
            with pytest.raises(ValueError) as err:
                parse(value)
            said = str(err.value)
            for bound in (low, high):
                if bound is not None:
                    number = f"{bound:g}"
                    assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", said), (
                        f"{name} {flag}: help says {low}..{high}, the error says: {said}"
                    )


def test_main_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "0    done" in out and "1    some inputs failed" in out and "143  terminated" in out


# --------------------------------------------------------------------------- flags = options


def _option_classes() -> dict[str, type | None]:
    """The option dataclass whose fields are each command's flags (None: options come from
    --config/--set or are the command's own)."""
    from whisper_sv.app.chat import AppOptions
    from whisper_sv.data.feature_work import BuildOptions
    from whisper_sv.infer.streaming import StreamingOptions
    from whisper_sv.infer.transcriber import TranscribeOptions
    from whisper_sv.tune.study import TuneOptions
    from whisper_sv.workflows.demo import DemoOptions
    from whisper_sv.workflows.pipeline import PipelineConfig

    return {
        "transcribe": TranscribeOptions,
        "evaluate": TranscribeOptions,
        "features": BuildOptions,
        "train": None,
        "export": None,
        "demo": DemoOptions,
        "pipeline": PipelineConfig,
        "app": AppOptions,
        "live": StreamingOptions,
        "tune": TuneOptions,
        "average": None,
        "experiment": None,
    }


# Flags whose default is not their field's, and why.
FLAG_DEFAULTS = {
    # files: beam 5 was 3.7-5.9 WER points better on long real files (docs/benchmarks.md)
    ("transcribe", "beam_size"): 5,
}


# The fields that are flags where not every field is, and why.
FIELD_FLAGS = {
    # evaluate scores long files whole (vad off) with the decoding flags a WER report needs
    "evaluate": {"language", "beam_size", "batch_size"},
    # the pipeline's stages are configured in its YAML (--config) and --set
    "pipeline": {"push_to_hub", "force"},
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_flags_are_the_option_fields(name):
    cls = _option_classes()[name]
    actions = {a.dest: a for a in _subcommands()[name]._actions}
    if cls is None:  # training options come from --config/--set: no flag declares one again
        from whisper_sv.train.run import TrainConfig

        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        assert not train_fields & set(actions), (name, train_fields & set(actions))
        return
    comments = cli.field_comments(cls)
    hints = typing.get_type_hints(cls)
    flagged = FIELD_FLAGS.get(name, {f.name for f in dataclasses.fields(cls)})
    for field in dataclasses.fields(cls):
        if field.name not in flagged:
            assert field.name not in actions, (name, field.name)
            continue
        assert field.name in actions, f"{name}: no flag for {cls.__name__}.{field.name}"
        action = actions[field.name]
        assert action.default == FLAG_DEFAULTS.get((name, field.name), field.default), (
            name,
            field.name,
        )
        assert action.help == comments[field.name].replace("%", "%%"), (name, field.name)
        if typing.get_origin(hints[field.name]) is typing.Literal:
            assert tuple(action.choices) == typing.get_args(hints[field.name])
    # Parsing no flags gives the dataclass's defaults.
    args = cli.build_parser().parse_args([name, *REQUIRED[name]])
    if flagged == {f.name for f in dataclasses.fields(cls)}:
        moved = {f: v for (n, f), v in FLAG_DEFAULTS.items() if n == name}
        assert cli.options_from(cls, args) == dataclasses.replace(cls(), **moved)


@pytest.mark.parametrize(
    "name", sorted(n for n, p in _subcommands().items() if "--set" in p._option_string_actions)
)
def test_set_is_repeatable_and_keeps_every_value(name):
    action = _subcommands()[name]._option_string_actions["--set"]
    argv = [name, *REQUIRED[name], "--set", "a=1", "--set", "b=2", "c=[3, 4]"]
    args = cli.build_parser().parse_args(argv)
    assert tuple(getattr(args, action.dest)) == ("a=1", "b=2", "c=[3, 4]")


def test_set_is_taken_by_every_command_with_options_files():
    with_set = {n for n, p in _subcommands().items() if "--set" in p._option_string_actions}
    assert with_set == {"train", "tune", "demo", "pipeline", "experiment"}


def test_a_second_help_text_is_refused():
    from whisper_sv.tune.study import TuneOptions

    parser = argparse.ArgumentParser()
    with pytest.raises(TypeError, match="put the text there"):
        cli.option_flag(parser, TuneOptions, "seed", help="another text")


def test_tuple_flags_take_comma_lists_and_replace_the_default():
    from whisper_sv.data.feature_work import BuildOptions

    parse = cli.build_parser().parse_args
    args = parse(["features", "--split", "train,test", "--split", "dev", "--speed", "0.9,1.1"])
    options = cli.options_from(BuildOptions, args)
    assert options.splits == ("train", "test", "dev") and options.speed == (0.9, 1.1)
    assert options.augment_splits == ("train",)
    args = parse(["features", "--augment-splits", "dev", "--shard", "1/4"])
    options = cli.options_from(BuildOptions, args)
    assert options.augment_splits == ("dev",) and options.shard == (1, 4)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["features", "--speed", "fast"], "--speed: 'fast': give float values separated by commas"),
        (["features", "--shard", "half"], "--shard: 'half' is not I/N; give e.g. 0/4"),
        (["tune", *REQUIRED["tune"], "--seeds", "1,x"], "--seeds: '1,x': give int values"),
    ],
)
def test_bad_list_values_are_usage_errors(argv, said, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert said in _one_line_error(capsys)


def test_no_private_name_is_imported_between_cli_modules():
    import ast

    for path in (SRC / "whisper_sv" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "whisper_sv.cli"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_field_comments_are_the_help():
    from whisper_sv.app.chat import AppOptions

    comments = cli.field_comments(AppOptions)
    assert comments["port"] == "TCP port, 1-65535"
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
    # A file that is there but is no audio fails while decoding (a missing one is bad usage: 2).
    good = _wav(tmp_path / "good.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    rc = cli.main(["transcribe", "--model", str(tiny_ct2_dir), str(good), str(broken)])
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
                    proc.kill()  # before reading: a live process's pipe never ends
                    said = proc.stdout.read().decode(errors="replace")
                    raise AssertionError(f"the app did not serve in 90 s: {said}") from None
                time.sleep(1)
        got = client.predict(handle_file(str(_wav(tmp_path / "a.wav"))), api_name="/transcribe")
        text = got["swedish"]
        written = list(scratch.glob("whisper-sv-app-*/*/*.srt"))
        assert written, f"no transcript files written (transcript {text!r})"
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("the app did not stop 120 s after SIGTERM") from None
        assert code == 128 + signal.SIGTERM
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
    options = cli.options_from(BuildOptions, args)
    assert (options.engine, options.ray_address) == ("ray", "ray://h:10001")
    default = cli.options_from(BuildOptions, parse(["features", "--out", "s"]))
    assert (default.engine, default.ray_address) == (BuildOptions.engine, None) == ("local", None)


def test_tune_storage_flags_reach_tune_options():
    from whisper_sv.tune.study import TuneOptions

    parse = cli.build_parser().parse_args
    need = REQUIRED["tune"]
    args = parse(["tune", *need, "--storage", "sqlite:///t.db", "--worker", "--heartbeat", "7"])
    options = cli.options_from(TuneOptions, args)
    assert (options.storage, options.worker, options.heartbeat_s) == ("sqlite:///t.db", True, 7)
    assert cli.options_from(TuneOptions, parse(["tune", *need])) == TuneOptions()


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


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_highlighted_words_in_a_format_without_cues_is_refused(capsys, tmp_path, fmt):
    clip = _wav(tmp_path / "a.wav")
    assert cli.main(["transcribe", "--highlight-words", "--format", fmt, str(clip)]) == 2
    line = _one_line_error(capsys)
    assert f"--format {fmt} has none" in line and "--format srt or vtt" in line
