"""Training pipeline on the tiny random Whisper and a tiny real feature store (seconds each).

The store is made by the real feature pipeline from :class:`ToySource`: one tone per sentence
(so there is something to learn) with a little noise, a few short Swedish sentences.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAST_TRAIN, SENTENCES, ToySource, fast_config, make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The shared fast recipe (conftest): decoder-only training on cached encoder outputs.
FAST = FAST_TRAIN
config = fast_config


@pytest.fixture(scope="module")
def store(tmp_path_factory, processor) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", processor)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, store, tiny_model_dir):
    """One complete run (with ct2 export) shared by the tests that only read it."""
    from whisper_sv.train.run import train

    out = tmp_path_factory.mktemp("runs") / "run"
    result = train(
        store, out, model=str(tiny_model_dir), config=config(export_ct2=True), progress=False
    )
    return out, result


# --------------------------------------------------------------------------- config


def test_config_rejects_bad_values_naming_the_fix():
    from whisper_sv.train.run import TrainConfig

    with pytest.raises(ValueError, match="eval_steps must be >= 1"):
        TrainConfig(eval_steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(lr=-1e-5)
    with pytest.raises(ValueError, match="max_steps.*epochs"):
        TrainConfig(max_steps=0, epochs=0)
    with pytest.raises(ValueError, match="cache_encoder: false"):
        TrainConfig(freeze_encoder=True, spec_augment=True)
    TrainConfig(freeze_encoder=True, cache_encoder=False, spec_augment=True)  # allowed


def test_yaml_and_overrides_reject_unknown_keys_and_wrong_types(tmp_path):
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.train.run import TrainConfig

    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("lr: 3e-4\nmax_steps: 20\nlora_targets: [q_proj, k_proj]\n")
    cfg = load_options(TrainConfig, yaml_file, parse_overrides(["batch_size=8"]))
    assert (cfg.lr, cfg.max_steps, cfg.batch_size) == (3e-4, 20, 8)
    assert cfg.lora_targets == ("q_proj", "k_proj")
    with pytest.raises(ValueError, match="unknown option.*learning_rate.*valid options"):
        load_options(TrainConfig, None, {"learning_rate": 1e-5})
    with pytest.raises(ValueError, match="max_steps"):
        load_options(TrainConfig, None, parse_overrides(["max_steps=many"]))


def test_cli_config_errors_come_before_any_training(tmp_path, store, capsys):
    from whisper_sv.cli.main import main

    run = tmp_path / "run"
    base = ["train", "--features", str(store), "--out", str(run), "--no-progress"]
    assert main([*base, "--set", "eval_steps=0"]) == 2
    assert "eval_steps must be >= 1" in capsys.readouterr().err
    assert main([*base, "--set", "lr=-1"]) == 2
    assert "lr must be a positive number" in capsys.readouterr().err
    assert main([*base, "--set", "nonsense=1"]) == 2
    assert "unknown option(s) nonsense" in capsys.readouterr().err
    assert not run.exists()


def test_warmup_longer_than_training_is_refused(tmp_path, store, tiny_model_dir):
    from whisper_sv.train.run import train

    with pytest.raises(ValueError, match="warmup_steps .* must be below"):
        train(store, tmp_path / "run", model=str(tiny_model_dir), config=config(warmup_steps=10))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- store errors


def test_missing_store_is_a_clear_error(tmp_path, tiny_model_dir):
    from whisper_sv.data.store import StoreError
    from whisper_sv.train.run import train

    with pytest.raises(StoreError, match="does not exist.*whisper-sv features"):
        train(tmp_path / "nope", tmp_path / "run", model=str(tiny_model_dir), config=config())
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a feature store"):
        train(tmp_path / "empty", tmp_path / "run", model=str(tiny_model_dir), config=config())
    assert not (tmp_path / "run").exists()


def test_corrupt_store_is_a_clear_error(tmp_path, store, tiny_model_dir):
    from whisper_sv.data.store import StoreError
    from whisper_sv.train.run import train

    broken = tmp_path / "broken"
    shutil.copytree(store, broken)
    shard = sorted((broken / "train").glob("shard-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated: no Parquet footer
    with pytest.raises(StoreError, match="not a readable shard"):
        train(broken, tmp_path / "run", model=str(tiny_model_dir), config=config())
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        train(broken, tmp_path / "run", model=str(tiny_model_dir), config=config())
    assert not (tmp_path / "run").exists()


def test_store_of_another_model_is_refused(tmp_path, tiny_model_dir):
    """A store made for a 128-mel model (large-v3) does not train an 80-mel model."""
    from whisper_sv.data.store import StoreError
    from whisper_sv.models.bundled import bundled_tokenizer_json
    from whisper_sv.models.processor import build_processor
    from whisper_sv.train.run import train

    proc128 = build_processor(bundled_tokenizer_json(), n_mels=128)
    foreign = make_store(tmp_path / "store128", proc128, n_train=4, n_val=0)
    with pytest.raises(StoreError, match="128-bin log-mel, the model takes 80"):
        train(foreign, tmp_path / "run", model=str(tiny_model_dir), config=config())
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- a run


def test_training_reduces_loss_and_writes_the_run_folder(finished_run):
    from whisper_sv.core.run_metrics import COLUMNS

    run, result = finished_run
    assert result.step == 6 and result.max_steps == 6 and result.resumed_from == 0
    assert [r.step for r in result.rows] == [3, 6]
    first, last = result.rows[0], result.rows[-1]
    assert last.train_loss < first.train_loss
    assert last.val_loss < first.val_loss
    assert all(r.wer >= 0 and r.cer >= 0 for r in result.rows)
    for name in ("config.yaml", "metrics.csv", "metrics.md", "curves.png", "model_card.md"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS == ("Step", "Training Loss", "Validation Loss", "WER", "CER")
    assert [int(r[0]) for r in rows[1:]] == [3, 6]
    assert float(rows[2][1]) == pytest.approx(last.train_loss, abs=1e-4)
    md = (run / "metrics.md").read_text().splitlines()
    assert md[0] == "| Step | Training Loss | Validation Loss | WER | CER |"
    assert md[3].startswith("| 6 | ")
    card = (run / "model_card.md").read_text()
    assert "| train | 16 |" in card and "| Step | Training Loss" in card
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every checkpoint is complete
    for ckpt in sorted((run / "checkpoints").iterdir()):
        names = {p.name for p in ckpt.iterdir()}
        assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"} <= names
        assert json.loads((ckpt / "state.json").read_text())["step"] == int(ckpt.name[5:])
    assert not (run / "cache").exists()  # encoder cache removed at the end


def test_config_yaml_records_model_store_and_options(finished_run, store, tiny_model_dir):
    import yaml

    from whisper_sv.data.store import FeatureStore

    run, _ = finished_run
    info = yaml.safe_load((run / "config.yaml").read_text())
    assert info["model"] == str(Path(tiny_model_dir).resolve())
    assert info["features"] == str(Path(store).resolve())
    assert info["store_config_hash"] == FeatureStore(store).config.hash()
    assert info["train"]["lr"] == FAST["lr"] and info["train"]["freeze_encoder"] is True
    assert info["precision"] in ("fp32", "bf16") and info["world_size"] == 1


def test_run_folder_is_a_model_reference_and_ct2_loads(finished_run, store):
    import faster_whisper

    from whisper_sv.models.references import ct2_dir, load_model, resolve

    run, result = finished_run
    ref = resolve(str(run))
    assert ref.kind == "run"
    state = json.loads((run / "best" / "training_state.json").read_text())
    assert state["step"] == result.best_step
    model, processor = load_model(str(run))
    assert model.config.d_model == 64
    assert ct2_dir(str(run)) == run / "ct2"
    fw = faster_whisper.WhisperModel(str(run / "ct2"), device="cpu", compute_type="float32")
    source = ToySource()
    audio = source.load(next(iter(source.items("validation"))))
    segments, info = fw.transcribe(
        audio, language="sv", beam_size=1, temperature=0.0, max_new_tokens=8, vad_filter=False
    )
    list(segments)  # decodes offline without error
    assert info.language == "sv"


def test_one_rule_decides_what_a_run_folder_is(finished_run, tmp_path):
    """A run with its config but no best/ yet can be resumed, but it is no model reference,
    no run of the app's list and no start of a translation; a finished run is all four."""
    from whisper_sv.core.run_folder import RunFolder, is_run_folder
    from whisper_sv.infer.translation_model import run_of
    from whisper_sv.models.references import resolve

    run, _ = finished_run
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run / "config.yaml", started / "config.yaml")
    assert RunFolder(started).is_run() and is_run_folder(started, with_model=False)
    assert not is_run_folder(started) and run_of(str(started)) is None
    with pytest.raises(ValueError, match="not a model"):
        resolve(str(started))
    assert is_run_folder(run) and RunFolder(run).is_run()
    assert run_of(str(run / "best")) == run.resolve()
    assert not is_run_folder(tmp_path / "nothing", with_model=False)


def test_export_command_writes_a_ct2_folder(finished_run, tmp_path, capsys):
    from whisper_sv.cli.main import main

    run, _ = finished_run
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    assert str(out) in capsys.readouterr().out


# --------------------------------------------------------------------------- resume


def test_resume_is_exact(tmp_path, store, tiny_model_dir):
    """4 steps straight == 2 steps, (loss of the rest), resume to 4: same weights, same rows."""
    from safetensors.torch import load_file

    from whisper_sv.train.run import train

    # Through the data loader (encoder run each step), with dropout: RNG and data position
    # matter.
    cfg = config(
        cache_encoder=False,
        dropout=0.1,
        batch_size=2,
        max_steps=4,
        eval_steps=2,
        save_steps=2,
        eval_limit=2,
        eval_max_new_tokens=4,
    )
    straight = train(store, tmp_path / "a", model=str(tiny_model_dir), config=cfg, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")  # as if killed after 2
    resumed = train(store, tmp_path / "b", model=None, config=cfg, resume=True, progress=False)
    assert resumed.resumed_from == 2 and resumed.step == 4
    assert resumed.samples == 2 * 2
    assert [r.step for r in resumed.rows] == [2, 4]
    for a, b in zip(straight.rows, resumed.rows, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-5)
        assert b.val_loss == pytest.approx(a.val_loss, abs=1e-5)
    wa = load_file(tmp_path / "a" / "checkpoints" / "step-00000004" / "trainable.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step-00000004" / "trainable.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_rerun_with_other_model_store_or_settings_is_refused(
    tmp_path, finished_run, store, processor, tiny_model_dir
):
    from whisper_sv.train.run import train

    run, _ = finished_run
    other_store = make_store(tmp_path / "other", processor, n_train=8, n_val=2, seed=3)
    with pytest.raises(ValueError, match="was trained on the store"):
        train(other_store, run, config=config(export_ct2=True))
    with pytest.raises(ValueError, match="was trained from model"):
        train(store, run, model="bundled:base", config=config(export_ct2=True))
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.01\)"):
        train(store, run, config=config(export_ct2=True, lr=1e-2))
    with pytest.raises(ValueError, match="holds no run"):
        train(store, tmp_path / "fresh", config=config(), resume=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a run folder"):
        train(store, tmp_path / "junk", model=str(tiny_model_dir), config=config())


def test_rerun_of_a_finished_run_changes_nothing(finished_run, store):
    from whisper_sv.train.run import train

    run, first = finished_run
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    again = train(store, run, config=config(export_ct2=True), progress=False)
    assert again.step == first.step and again.samples == 0
    assert again.rows == first.rows
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts


def test_a_run_can_be_extended(tmp_path, store, tiny_model_dir):
    from whisper_sv.train.run import train

    cfg = config(max_steps=2, eval_steps=2, save_steps=2, eval_limit=1)
    train(store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False)
    longer = train(store, tmp_path / "run", config=replace(cfg, max_steps=4), progress=False)
    assert longer.resumed_from == 2 and longer.step == 4
    assert [r.step for r in longer.rows] == [2, 4]


# --------------------------------------------------------------------------- options


def test_early_stopping_with_patience(tmp_path, store, tiny_model_dir):
    """With a learning rate too small to change a greedy transcript, WER never improves."""
    from whisper_sv.train.run import train

    cfg = config(lr=1e-12, max_steps=20, eval_steps=1, save_steps=5, patience=2, eval_limit=2)
    result = train(store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False)
    assert result.stopped_early
    assert result.step == 3  # best at step 1, no better at 2 and 3
    assert result.best_step == 1
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()


def test_lora_run_saves_a_plain_best_model(tmp_path, store, tiny_model_dir):
    from whisper_sv.models.references import load_model
    from whisper_sv.train.run import train

    cfg = config(lora_rank=4, lr=1e-2, max_steps=4, eval_steps=2, save_steps=2, eval_limit=1)
    result = train(store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False)
    assert result.rows[-1].train_loss < result.rows[0].train_loss
    model, _ = load_model(str(tmp_path / "run"))
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_runs_of_different_precision_in_one_process(tmp_path, store, tiny_model_dir):
    # Accelerate keeps one process-wide state: a second run with another precision used to
    # fail with "AcceleratorState has already been initialized".
    from whisper_sv.train.run import train

    for precision in ("fp32", "bf16", "fp32"):
        result = train(
            store,
            tmp_path / precision / str(len(list(tmp_path.iterdir()))),
            model=str(tiny_model_dir),
            config=config(precision=precision, max_steps=2, eval_steps=2, save_steps=2),
            progress=False,
        )
        info = (result.run / "config.yaml").read_text(encoding="utf-8")
        assert f"precision: {precision}" in info and result.step == 2


def test_frozen_embeddings_and_spec_augment_run(tmp_path, store, tiny_model_dir):
    from safetensors.torch import load_file

    from whisper_sv.train.run import train

    cfg = config(
        train_embeddings=False,
        freeze_encoder=False,
        spec_augment=True,
        mask_time_prob=0.2,
        max_steps=2,
        eval_steps=2,
        save_steps=2,
        dropout=0.1,
        batch_size=2,
        eval_limit=1,
    )
    train(store, tmp_path / "run", model=str(tiny_model_dir), config=cfg, progress=False)
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-00000002" / "trainable.safetensors")
    assert not any("embed_tokens" in k for k in saved)
    assert any("encoder.layers" in k for k in saved)


# --------------------------------------------------------------------------- evaluation


def test_greedy_decode_matches_generate(tiny_model, store):
    """The fast evaluation decoder gives exactly what transformers' generate gives."""
    import torch

    from whisper_sv.data.store import FeatureStore, collate
    from whisper_sv.train.scoring import greedy_decode, prompt_ids, suppress_lists

    model, processor = tiny_model
    ds = FeatureStore(store).torch_dataset("validation")
    feats = collate([ds[i] for i in range(3)])["input_features"]
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    suppress, begin = suppress_lists(model, eot, model.config.vocab_size)
    with torch.no_grad():
        hidden = model.get_encoder()(feats).last_hidden_state
        ours = greedy_decode(
            model,
            hidden,
            prompt_ids(processor, "sv", "transcribe"),
            max_new_tokens=12,
            eot_id=eot,
            suppress_ids=suppress,
            begin_suppress_ids=begin,
        )
        ref = model.generate(
            feats,
            language="sv",
            task="transcribe",
            max_new_tokens=12,
            do_sample=False,
            num_beams=1,
            suppress_tokens=suppress,
            begin_suppress_tokens=begin,
        )
    ref_rows = [[t for t in row if t != eot and t < eot] for row in ref.tolist()]
    assert ours == ref_rows
    assert all(len(r) > 0 for r in ours)


def test_evaluate_dataset_gives_loss_and_rates(tiny_model, store):
    from whisper_sv.data.store import FeatureStore
    from whisper_sv.train.run import evaluate_dataset

    model, processor = tiny_model
    ds = FeatureStore(store).torch_dataset("validation")
    res = evaluate_dataset(model, processor, ds, indices=[0, 1, 2], max_new_tokens=8)
    assert res.n == 3 and res.val_loss > 0 and res.wer >= 0
    assert res.references[0] == SENTENCES[0]
