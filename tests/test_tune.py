"""Optuna studies over training runs: space validation, the three samplers, seeds, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from whisper_sv.train.run import TrainConfig
from whisper_sv.tune.study import (
    SearchSpace,
    TuneOptions,
    load_space,
    planned_steps,
    trial_config,
    tune,
)

REPO = Path(__file__).resolve().parents[1]

# Two optimizer steps, one short evaluation: a trial of the tiny model is mostly start-up.
# A trial: two steps of the tiny model scored on one clip.
TINY_TRAIN = {
    "max_steps": 2,
    "warmup_steps": 0,
    "batch_size": 2,
    "freeze_encoder": True,
    "eval_limit": 1,
    "eval_batch_size": 1,
    "eval_max_new_tokens": 3,
}


def _trial_states(study: Path) -> list[str]:
    """Trial states read from the database without writing to it: opening it through optuna
    while the study process is still creating its schema races that process."""
    import sqlite3

    db = study / "study.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # tables not created yet, or the file is locked for a moment
        return []


def _study_trials(study: Path):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{study / 'study.db'}")
    try:
        return optuna.load_study(study_name="whisper-sv", storage=storage).get_trials()
    except KeyError:  # the database file exists before the study is created in it
        return []


# --------------------------------------------------------------------------- search space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}, "not a training option"),
        ({"lr": 1e-4}, "fixed values go in the base config"),
        ({"lr": {"type": "double", "low": 1, "high": 2}}, "type must be one of"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, "must be below high"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "needs low > 0"),
        ({"lr": {"type": "float", "low": 1e-5}}, "needs `low` and `high`"),
        ({"lr": {"type": "float", "values": [1e-4], "low": 1e-5}}, "not both"),
        ({"lr": {"type": "float", "values": [1e-4, "fast"]}}, "must be a number"),
        ({"lr": {"type": "float", "values": [1e-4, 1e-4]}}, "twice"),
        ({"lr": {"type": "float", "low": -1.0, "high": 1.0}}, "lr must be a positive number"),
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "scale": "log"}}, "unknown key"),
        ({"warmup_steps": {"type": "float", "low": 0, "high": 10}}, "use type: int"),
        ({"warmup_steps": {"type": "int", "values": [1, 2.5]}}, "whole numbers"),
        ({"lr": {"type": "float", "choices": [1e-4]}}, "`choices` is for type: categorical"),
        ({"freeze_encoder": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"freeze_encoder": {"type": "int", "low": 0, "high": 1}}, "bool option"),
        ({"freeze_encoder": {"type": "categorical", "choices": [True, "yes"]}}, "not usable"),
        ({"lora_rank": {"type": "categorical", "choices": [0, -8]}}, "lora_rank must be >= 0"),
        ([1, 2], "a mapping of option"),
    ],
)
def test_space_validation_names_the_fix(space, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.parse(space)


def test_grid_needs_explicit_values():
    space = SearchSpace.parse(
        {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "lora_rank": {"type": "categorical", "choices": [0, 8]},
        }
    )
    with pytest.raises(ValueError, match=r"grid sampler needs explicit values, but lr is a range"):
        space.grid()
    grid = SearchSpace.parse(
        {
            "lr": {"type": "float", "values": [1e-5, "1e-4"]},  # YAML 1.1 reads 1e-4 as text
            "lora_rank": {"type": "categorical", "choices": [0, 8]},
        }
    )
    assert grid.grid() == {"lr": [1e-5, 1e-4], "lora_rank": [0, 8]}
    assert grid.grid_size() == 4


def test_example_space_file_loads_and_refuses_grid():
    space = load_space(REPO / "examples" / "space.yaml")
    assert space.names[:2] == ["lr", "warmup_steps"]
    assert space.params[0].log and space.params[0].low == 1e-6
    with pytest.raises(ValueError, match="explicit values"):
        space.grid()


def test_space_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("lr: {type: float, low: 1e-3, high: 1e-5}\n")
    with pytest.raises(ValueError, match=r"space\.yaml: lr: low"):
        load_space(bad)
    with pytest.raises(FileNotFoundError):
        load_space(tmp_path / "missing.yaml")


def test_equal_epochs_gives_every_batch_size_the_same_samples(tmp_path):
    base = TrainConfig(warmup_steps=0, lr=1e-4)
    opts = TuneOptions(equal_epochs=2.0, evals_per_trial=2)
    small, steps_small = trial_config(base, {"batch_size": 2}, opts, 10, tmp_path)
    big, steps_big = trial_config(base, {"batch_size": 4, "lr": 1e-3}, opts, 10, tmp_path)
    assert (steps_small, steps_big) == (10, 5)  # ceil(2 * 10 / batch)
    assert steps_small * 2 == 20 and steps_big * 4 == 20  # the same 20 samples
    assert planned_steps(small, 10) == 10 and planned_steps(big, 10) == 5
    assert (small.eval_steps, big.eval_steps) == (5, 3)  # two evaluations each
    assert big.lr == 1e-3 and not big.export_ct2 and big.cache_dir == str(tmp_path)
    with pytest.raises(ValueError, match="warmup_steps .* must be below"):
        trial_config(TrainConfig(warmup_steps=10), {"batch_size": 4}, opts, 10, tmp_path)
    with pytest.raises(ValueError, match="not both"):
        TuneOptions(steps=10, equal_epochs=1.0)


def test_packed_trials_plan_the_steps_train_plans(tiny_store, tiny_model_dir, tmp_path):
    """With pack_clips > 1 an epoch walks packed windows, not clips: a trial's step plan (and
    so its eval_steps and warm-up check) must be the one train() makes."""
    from whisper_sv.data.store import open_store
    from whisper_sv.train.data_plan import train_windows
    from whisper_sv.train.run import train

    store = open_store(tiny_store)
    base = TrainConfig(**{**TINY_TRAIN, "batch_size": 1})
    opts = TuneOptions(equal_epochs=1.0, evals_per_trial=1)
    cfg, steps = trial_config(base, {"pack_clips": 4}, opts, store, tmp_path / "cache")
    windows = train_windows(store, cfg)
    assert cfg.pack_clips == 4 and len(windows) < store.num_rows("train") == 4
    assert steps == len(windows)  # batch 1, one epoch: one step per window
    assert cfg.eval_steps == steps
    _, clip_steps = trial_config(base, {"pack_clips": 1}, opts, store, tmp_path / "cache")
    assert clip_steps == 4  # unpacked, one step per clip
    result = train(
        tiny_store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False
    )
    assert result.max_steps == steps


def test_study_refuses_unusable_settings_before_training(tiny_store, tiny_model_dir, tmp_path):
    grid_of_ranges = SearchSpace.parse({"lr": {"type": "float", "low": 1e-5, "high": 1e-3}})
    with pytest.raises(ValueError, match="explicit values"):
        tune(tiny_store, tmp_path / "a", grid_of_ranges, TuneOptions(sampler="grid"))
    lrs = SearchSpace.parse({"lr": {"type": "float", "values": [1e-4, 1e-3]}})
    with pytest.raises(ValueError, match="warmup_steps"):
        tune(
            tiny_store,
            tmp_path / "b",
            lrs,
            TuneOptions(sampler="grid", steps=2, model=str(tiny_model_dir)),
            base=TrainConfig(warmup_steps=5),
        )
    assert not (tmp_path / "b" / "trials").exists()


# --------------------------------------------------------------------------- studies


def _check_study(result, study: Path, n: int) -> None:
    from whisper_sv.core.run_folder import read_metrics_csv

    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(complete) == n
    for t in complete:
        rows = read_metrics_csv(study / "trials" / f"{t.number:04d}" / "metrics.csv")
        assert rows and rows[-1].step == 2  # every trial trained its 2 steps
        assert t.wer == min(r.wer for r in rows if r.step > 0)  # objective = best WER
        assert t.steps == 2 and t.seconds > 0
        assert not (study / "trials" / f"{t.number:04d}" / "checkpoints").exists()
    # Only the best trial keeps its model.
    kept = [t.number for t in complete if (study / "trials" / f"{t.number:04d}" / "best").is_dir()]
    assert kept == [result.best.number]
    report = result.report.read_text()
    assert "## Trials" in report and f"| {complete[0].number} |" in report
    assert "## Best" in report and (study / "history.png").is_file()
    assert (study / "study.db").is_file()


def test_grid_study_with_seed_repeats(tiny_store, tiny_model_dir, tmp_path):
    study = tmp_path / "grid"
    space = SearchSpace.parse({"lr": {"type": "float", "values": [1e-4, 1e-3]}})
    opts = TuneOptions(
        sampler="grid", steps=2, evals_per_trial=1, model=str(tiny_model_dir), seeds=(3, 4)
    )
    result = tune(tiny_store, study, space, opts, base=TrainConfig(**TINY_TRAIN), progress=False)
    _check_study(result, study, 2)
    assert sorted(t.params["lr"] for t in result.trials) == [1e-4, 1e-3]  # the whole grid
    # Trials ran with the first seed; the best one was repeated with the second.
    trial_cfg = yaml.safe_load((study / "trials" / "0000.yaml").read_text())
    assert trial_cfg["seed"] == 3
    (stats,) = result.seeds
    assert stats.trial == result.best.number and stats.seeds == (3, 4)
    assert stats.wers[0] == result.best.wer
    assert min(stats.wers) == stats.min and stats.std >= 0
    assert (study / "seeds" / f"t{stats.trial:04d}-s4" / "metrics.csv").is_file()
    assert "## Seeds" in result.report.read_text()
    # The importance plot needs two complete trials that differ: here it is drawn.
    assert (study / "importance.png").is_file()


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_random_and_tpe_studies(sampler, tiny_store, tiny_model_dir, tmp_path):
    study = tmp_path / sampler
    space = SearchSpace.parse(
        {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "weight_decay": {"type": "float", "values": [0.0, 0.01]},
        }
    )
    opts = TuneOptions(
        sampler=sampler, trials=2, steps=2, evals_per_trial=1, model=str(tiny_model_dir)
    )
    result = tune(tiny_store, study, space, opts, base=TrainConfig(**TINY_TRAIN), progress=False)
    _check_study(result, study, 2)
    for t in result.trials:
        assert 1e-5 <= t.params["lr"] <= 1e-3 and t.params["weight_decay"] in (0.0, 0.01)
    assert result.trials[0].params["lr"] != result.trials[1].params["lr"]
    # A re-run with the study complete trains nothing and keeps the trials.
    again = tune(tiny_store, study, space, opts, base=TrainConfig(**TINY_TRAIN), progress=False)
    assert [t.number for t in again.trials] == [0, 1]
    # Another search in the same folder is refused.
    other = SearchSpace.parse({"lr": {"type": "float", "values": [1e-4]}})
    with pytest.raises(ValueError, match="other settings"):
        tune(tiny_store, study, other, opts, base=TrainConfig(**TINY_TRAIN), progress=False)


def _tune_cmd(store: Path, study: Path, space: Path, model: Path, trials: int) -> list[str]:
    cmd = [sys.executable, "-m", "whisper_sv", "tune", "--features", str(store)]
    cmd += ["--space", str(space), "--out", str(study), "--sampler", "random"]
    cmd += ["--trials", str(trials), "--model", str(model), "--steps", "2", "--evals", "1"]
    cmd += ["--no-progress"]
    for k, v in TINY_TRAIN.items():
        if k != "max_steps":
            cmd += ["--set", f"{k}={str(v).lower()}"]
    return cmd


def _train_processes(study: Path) -> list[int]:
    """Pids of training processes writing into ``study`` (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in cmdline and any(str(study).encode() in c for c in cmdline):
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and kill -9")
@pytest.mark.slow  # two real processes, one killed
def test_killed_study_resumes(tiny_store, tiny_model_dir, tmp_path):
    from optuna.trial import TrialState

    study = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = _tune_cmd(tiny_store, study, space, tiny_model_dir, trials=3)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Kill the study while trial 1 trains, once trial 0 is complete in the database.
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no trial completed in 10 minutes"
            states = _trial_states(study)
            if "COMPLETE" in states and "RUNNING" in states:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _study_trials(study)
    done_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    cut = [t.number for t in before if t.state == TrialState.RUNNING]
    assert done_before and cut
    for _ in range(20):  # the training process dies with its study (PR_SET_PDEATHSIG)
        if not _train_processes(study):
            break
        time.sleep(0.5)
    assert not _train_processes(study)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {t.number: t for t in _study_trials(study)}
    assert len(after) > len(before)
    for number, value in done_before.items():  # completed trials are kept as they were
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    for number in cut:  # the cut-off trial is failed and retried with the same settings
        assert after[number].state == TrialState.FAIL
        assert after[number].user_attrs["interrupted"] is True
        retry = [t for t in after.values() if t.user_attrs.get("retry_of") == number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        assert retry[0].params == after[number].params
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 3
    assert "retry of #" in (study / "report.md").read_text()


def test_cli_reports_space_errors(tiny_store, tmp_path, capsys):
    from whisper_sv.cli.main import main

    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1e-5, high: 1e-3}\n")
    code = main(
        ["tune", "--features", str(tiny_store), "--space", str(space), "--out", str(tmp_path / "s")]
        + ["--sampler", "grid"]
    )
    assert code == 2
    assert "explicit values" in capsys.readouterr().err


def test_a_study_starts_its_trials_from_a_hub_model_offline(tiny_hub, tiny_store, tmp_path):
    """``tune --model ORG/NAME@REVISION``: each trial, a child ``whisper-sv train``, loads the
    hub model from the hub cache (the CTranslate2-only default branch, converted once)."""
    from conftest import TINY_HUB

    from whisper_sv.cli.main import main

    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, values: [1e-3]}\n")
    base = tmp_path / "train.yaml"
    base.write_text(yaml.safe_dump(TINY_TRAIN))
    study = tmp_path / "study"
    argv = ["tune", "--features", str(tiny_store), "--space", str(space), "--out", str(study)]
    argv += ["--sampler", "grid", "--model", TINY_HUB, "--config", str(base), "--steps", "2"]
    assert main([*argv, "--evals", "1", "--no-progress"]) == 0
    (trial,) = sorted((study / "trials").glob("0000*/config.yaml"))
    info = yaml.safe_load(trial.read_text())
    assert info["model"] == TINY_HUB
    assert info["model_origin"]["commit"] == tiny_hub.commits[f"{TINY_HUB}@main"]
    card = yaml.safe_load((trial.parent / "model_card.md").read_text().split("---")[1])
    assert card["base_model"] == TINY_HUB


def test_trial_process_is_stopped_when_pruned_or_out_of_time(tiny_store, tiny_model_dir, tmp_path):
    from whisper_sv.core.config import dump_options
    from whisper_sv.tune.runner import run_training as _run_training

    # 40 steps, an evaluation after each: far more than the watcher lets it do.
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 40, "eval_steps": 1, "export_ct2": False})
    dump_options(cfg, tmp_path / "train.yaml")
    seen = []

    def prune_at_first(k, row):
        seen.append((k, row.step))
        return True

    out = _run_training(
        tiny_store,
        tmp_path / "run",
        tmp_path / "train.yaml",
        str(tiny_model_dir),
        tmp_path / "run.log",
        on_eval=prune_at_first,
        time_budget_s=0,
        poll_s=0.2,
    )
    assert out.stopped == "pruned" and out.returncode is None
    assert seen[0] == (1, 1)  # reported as the first evaluation, at step 1
    assert out.rows[-1].step < 40  # it did not train to the end
    assert not _train_processes(tmp_path)

    quick = _run_training(
        tiny_store,
        tmp_path / "run2",
        tmp_path / "train.yaml",
        str(tiny_model_dir),
        tmp_path / "run2.log",
        on_eval=None,
        time_budget_s=0.5,
        poll_s=0.2,
    )
    assert quick.stopped == "time budget" and quick.seconds < 30
    assert not _train_processes(tmp_path)
