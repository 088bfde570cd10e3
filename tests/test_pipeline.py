"""The idempotent pipeline and the demo, end to end on the tiny model and real synthetic speech."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from whisper_sv.cli.main import main

TINY_TRAIN = {
    "lr": 1e-3,
    "warmup_steps": 1,
    "batch_size": 4,
    "max_steps": 4,
    "eval_steps": 2,
    "save_steps": 2,
    "eval_max_new_tokens": 8,
    "freeze_encoder": True,
}


def _config(tmp_path: Path, model: Path, train: int = 8) -> Path:
    config = {
        "source": "synthetic",
        "source_options": {"train": train, "validation": 3, "test": 3},
        "store": str(tmp_path / "store"),
        "runs": str(tmp_path / "runs"),
        "model": str(model),
        "features": {"workers": 1, "progress": False, "shard_size": 4},
        "train": TINY_TRAIN,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stages(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_pipeline_runs_every_stage_then_skips_them(tmp_path, tiny_model_dir, capsys):
    config = _config(tmp_path, tiny_model_dir)
    assert main(["pipeline", "--config", str(config)]) == 0
    first = _stages(capsys.readouterr().out)
    assert all(" ran " in first[s] for s in ("features", "train", "evaluate"))
    (run,) = (tmp_path / "runs").iterdir()
    # Exporting is the pipeline's own stage (after the guard check), not training's.
    assert " ran " in first["export"] and str(run / "ct2") in first["export"]
    assert (run / "ct2" / "model.bin").is_file() and (run / "metrics.csv").is_file()

    # The evaluate stage wrote the scores of the run's best model on the test split.
    from whisper_sv.train.scoring import evaluate_split

    result = json.loads((run / "eval-test.json").read_text())
    again = evaluate_split(str(run), tmp_path / "store", "test")
    assert result["model"] == str(run) and result["split"] == "test"
    assert (result["n"], result["wer"], result["cer"]) == (3, again.wer, again.cer)
    assert result["val_loss"] == pytest.approx(again.val_loss)

    assert main(["pipeline", "--config", str(config)]) == 0
    second = _stages(capsys.readouterr().out)
    assert all("up to date" in second[s] for s in ("features", "train", "evaluate", "export"))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]


def test_pipeline_trains_a_new_run_when_the_data_grows(tmp_path, tiny_model_dir, capsys):
    main(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, train=8))])
    main(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, train=12))])
    out = _stages(capsys.readouterr().out)
    assert " ran " in out["train"]
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_pipeline_rejects_bad_options_before_any_work(tmp_path, tiny_model_dir, capsys):
    config = _config(tmp_path, tiny_model_dir)
    assert main(["pipeline", "--config", str(config), "--set", "train={lrate: 1}"]) == 2
    assert "lrate" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_push_to_hub_offline_fails_before_any_work(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, tiny_model_dir)
    assert main(["pipeline", "--config", str(config), "--push-to-hub", "me/whisper-sv"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def _small_real_sets(root: Path, shared: Path) -> Path:
    """A few rows of each real set (absolute paths), so the demo's real rows run in seconds."""
    for name, every in (("lexin-phrases", 23), ("sv-words", 16), ("cv-dev", 10)):
        lines = (shared / name / "manifest.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], lines[1::every]
        (root / name).mkdir(parents=True)
        body = [f"{shared / name / r.split(chr(9))[0]}\t{r.split(chr(9), 1)[1]}" for r in rows]
        (root / name / "manifest.tsv").write_text("\n".join([header, *body]) + "\n")
    return root


def _tiny_demo(tmp_path: Path, model: Path, **changes):
    """The demo on the tiny model with a few clips (``changes``: more DemoOptions)."""
    from whisper_sv.workflows.demo import DemoOptions, run_demo

    base = dict(train_clips=8, validation_clips=2, batch_size=4, eval_steps=1, workers=1)
    return run_demo(DemoOptions(out=tmp_path / "demo", model=str(model), **{**base, **changes}))


def test_demo_runs_end_to_end_with_real_guards_and_rows(tmp_path, tiny_model_dir, sv_words_dir):
    from whisper_sv.data.store import FeatureStore

    real = _small_real_sets(tmp_path / "real", sv_words_dir.parent)
    res = _tiny_demo(
        tmp_path,
        tiny_model_dir,
        test_clips=3,
        max_steps=2,
        warmup_steps=1,
        real_data=str(real),
        guard_clips=4,
        long_form_s=10,
        long_form_guard_s=10,
    )
    assert res.n_test == 3 and res.sample_reference
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert report["wer_before"] == pytest.approx(res.wer_before)
    assert (res.run / "ct2" / "model.bin").is_file()
    names = [r.name for r in res.rows]
    # Real speech leads: in-domain held-out parts, general Swedish, long-form, English; the
    # synthetic row comes last.
    assert "lexin-phrases, held-out themes" in names[0] and "sv-words, held-out words" in names[1]
    assert names[2].startswith("general Swedish") and names[3].startswith("real long-form")
    assert names[-1] == "synthetic test, unseen voices"
    assert res.rows[-2].metric == "chrF" and res.rows[-2].before == 100.0
    english = res.rows[-3]
    assert english.metric == "English %" and 0 <= english.after <= 100
    table, said = (tmp_path / "demo" / "demo.md").read_text().split("\n\n")[:2]
    assert table.startswith("| set | clips | metric | pretrained | fine-tuned | change | 95%")
    assert len(table.strip().splitlines()) == 2 + len(res.rows)
    # Under the table: what best/ is, as guards.json has it.
    summary = json.loads((res.run / "guards.json").read_text())
    assert said == res.verdict and said.startswith("best/ is ")
    assert ("best/ is the start model" in said) == (summary["best"]["step"] == 0)
    assert ("Refused: step" in said) == summary["kept_start"]
    # Clip sets carry the paired-bootstrap interval of their change, which holds the change.
    for r in res.rows[:3]:
        assert r.interval is not None and r.interval[0] <= r.after - r.before <= r.interval[1]
    # The fine-tune was guarded by the guard parts, never by the held-out ones.
    config = yaml.safe_load((res.run / "config.yaml").read_text())
    guards = {g["name"]: g for g in config["train"]["guards"]}
    assert set(guards) == {"lexin-phrases", "sv-words", "cv-dev", "long-form"}
    # General Swedish: cv-dev guards whole, out of domain, with its own tolerance; its row
    # comes right after the in-domain ones, with error types; no clip of it is trained on.
    assert (guards["cv-dev"]["domain"], guards["cv-dev"]["tolerance"]) == ("out", 0.5)
    assert guards["lexin-phrases"]["domain"] == "in" and guards["lexin-phrases"]["tolerance"] < 0
    general = res.rows[2]
    assert general.name.startswith("general Swedish: cv-dev") and general.clips == 5
    assert set(general.errors_after) == {"substitutions", "deletions", "insertions", "length"}
    assert sum(general.errors_after[k] for k in ("substitutions", "deletions", "insertions")) == (
        pytest.approx(general.after)
    )
    assert "cv-dev" not in (tmp_path / "demo" / "real" / "train.tsv").read_text()
    assert "out of domain" in (res.run / "model_card.md").read_text()
    assert "Error types" in (tmp_path / "demo" / "demo.md").read_text()
    assert guards["long-form"]["long_form"] == 10
    assert config["train"]["select"] == "validation+guards" and config["train"]["lora_rank"] == 0
    # Translation is guarded on the phrases, and kept by real clips trained on English.
    assert [n for n, g in guards.items() if g.get("translate")] == ["lexin-phrases"]
    assert config["train"]["translate_share"] == 0.5
    assert config["train"]["translate_sources"] == ["manifest"]
    assert "not guarded" not in english.name
    assert all(g["path"].endswith("-guard.tsv") for g in guards.values())
    held_out = (tmp_path / "demo" / "real" / "lexin-phrases-test.tsv").read_text()
    guard_part = (tmp_path / "demo" / "real" / "lexin-phrases-guard.tsv").read_text()
    assert not set(held_out.splitlines()[1:]) & set(guard_part.splitlines()[1:])
    # A third of each real set's groups was mixed into training, none of the held-out ones.
    trained = (tmp_path / "demo" / "real" / "train.tsv").read_text().splitlines()[1:]
    assert trained and not set(trained) & set(held_out.splitlines()[1:])
    ids = [m["id"] for m in FeatureStore(tmp_path / "demo" / "store").metadata("train")]
    assert sum(i.startswith("real:") for i in ids) == 2 * len(trained)  # real_repeat copies
    assert "lexin-phrases WER" in (res.run / "metrics.md").read_text()
    assert (res.run / "guards.json").is_file()


def test_demo_starts_from_a_hub_model_and_its_guards_score_that_model_first(
    tmp_path, tiny_hub, sv_words_dir, capsys
):
    """``demo --model ORG/NAME@REVISION`` offline: the baseline and every guard's step-0
    value are that model's scores, the out-of-domain guard holds, the card names it."""
    from conftest import TINY_HUB

    ref = f"{TINY_HUB}@subtitle"
    real = _small_real_sets(tmp_path / "real", sv_words_dir.parent)
    out = tmp_path / "demo"
    small = {
        "--train-clips": 8,
        "--validation-clips": 2,
        "--test-clips": 2,
        "--batch-size": 4,
        "--max-steps": 1,
        "--warmup-steps": 0,
        "--eval-steps": 1,
        "--workers": 1,
        "--guard-clips": 2,
        "--real-test-clips": 2,
        "--long-form-s": 0,
        "--long-form-guard-s": 0,
        "--mixes": 0.5,
        "--budget": 0,
    }
    argv = ["demo", "--out", str(out), "--model", ref, "--real-data", str(real)]
    argv += [str(x) for kv in small.items() for x in kv] + ["--no-guard-translation"]
    assert main(argv) == 0
    assert f"baseline: {ref} on the test sets" in capsys.readouterr().out
    run = out / "run"
    summary = json.loads((run / "guards.json").read_text())
    assert summary["domains"]["cv-dev"] == "out" and set(summary["guards"]) == {
        "cv-dev",
        "lexin-phrases",
        "sv-words",
    }
    # The start model is scored first: its guard values are step 0 of the run's table.
    from whisper_sv.core.run_metrics import read_metrics_csv

    step0 = read_metrics_csv(run / "metrics.csv")[0]
    assert step0.step == 0 and summary["start"]["cv-dev WER"] == step0.extra["cv-dev WER"]
    card = (run / "model_card.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert (front["base_model"], front["base_model_revision"]) == (TINY_HUB, "subtitle")
    commit = tiny_hub.commits[ref]
    assert f"Fine-tuned from `{ref}` (hub commit `{commit}`)" in card
    assert "out of domain" in card and str(tmp_path) not in card


def test_demo_without_real_speech_has_synthetic_rows_only(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "cache"))
    res = _tiny_demo(
        tmp_path, tiny_model_dir, test_clips=2, max_steps=1, warmup_steps=0, real_data="none"
    )
    assert [r.name for r in res.rows] == ["synthetic test, unseen voices"]
    out = capsys.readouterr().out
    assert "synthetic rows only" in out
    assert not (res.run / "guards.json").exists()
    # The plan is printed before the work, and the report says what size the demo ran at.
    assert "plan: budget 15 min" in out and "rates: encoder" in out
    assert "2 test clips" in res.plan and res.predicted and res.total_seconds > 0
    # The rates were measured now, and kept for the next demo on this machine.
    assert "measured in" in res.rates and len(list((tmp_path / "cache").glob("rates-*"))) == 1


def test_real_speech_only_falls_back_to_synthetic_and_lora_adapts_the_decoder(
    tmp_path, tiny_model_dir, caplog, monkeypatch
):
    from whisper_sv.data.store import FeatureStore
    from whisper_sv.workflows import demo

    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "SYNTHETIC_FALLBACK", 6)
    res = _tiny_demo(
        tmp_path,
        tiny_model_dir,
        train_clips=0,
        test_clips=2,
        max_steps=1,
        warmup_steps=0,
        real_data="none",
        budget="0",
        lora_rank=4,
        sentence_case=True,
    )
    assert "training on 6 synthetic sentences instead" in caplog.text
    store = FeatureStore(tmp_path / "demo" / "store")
    assert len(store.metadata("train")) == 6 and store.config.sentence_case
    assert (res.run / "best").is_dir()
    # LoRA on every linear layer of the decoder, at the rank asked.
    train = yaml.safe_load((res.run / "config.yaml").read_text())["train"]
    assert train["lora_rank"] == 4
    assert set(train["lora_targets"]) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_second_demo_reads_the_scores_and_encoder_outputs_it_made(
    tmp_path, tiny_model_dir, capsys, monkeypatch, caplog
):
    import logging

    caplog.set_level(logging.INFO, logger="whisper_sv")
    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "cache"))
    recipe = dict(test_clips=2, max_steps=1, warmup_steps=0, real_data="none", budget="0")
    first = _tiny_demo(tmp_path / "a", tiny_model_dir, **recipe)
    baseline = capsys.readouterr().out.split("== baseline")[1].split("== fine-tune")[0]
    assert "read from the cache" not in baseline
    assert list((tmp_path / "cache").glob("encoder/test-*.npy"))
    assert "start model's scores read from" not in caplog.text
    second = _tiny_demo(tmp_path / "b", tiny_model_dir, **recipe)
    baseline = capsys.readouterr().out.split("== baseline")[1].split("== fine-tune")[0]
    assert "scores of this model read from the cache" in baseline
    # The fine-tune's step-0 evaluation of the start model, and its encoder outputs
    assert "start model's scores read from" in caplog.text
    assert "using cached encoder outputs" in caplog.text
    assert second.rows == first.rows and "no budget" in second.plan


@pytest.mark.parametrize("start", ["folder", "hub"])
def test_pipeline_refuses_to_promote_a_run_that_lost_its_guards(
    tmp_path, tiny_model_dir, tiny_model, capsys, start, request
):
    """The guards judge a run the same way whatever it started from: a model folder, or a
    hub model at a revision (``ORG/NAME@REVISION``, here the tiny model's weights)."""
    import soundfile as sf
    from conftest import TINY_HUB, ToySource, own_output_store

    if start == "hub":
        request.getfixturevalue("tiny_hub")

    model, processor = tiny_model
    guard = own_output_store(tmp_path / "guard", processor, model)
    # Tone clips, one tone per sentence: the tiny model's validation WER falls from its
    # babble (several hundred percent) within a few steps, while its output on the guard moves.
    toy, rows = ToySource(n_train=16, n_val=4), ["path\tsentence\tsplit"]
    for split in ("train", "validation"):
        for item in toy.items(split):
            sf.write(tmp_path / f"{item.id}.wav", toy.load(item), 16000)
            rows.append(f"{item.id}.wav\t{item.sentence}\t{split}")
    (tmp_path / "toy.tsv").write_text("\n".join(rows) + "\n")
    config = _config(tmp_path, tiny_model_dir)
    data = yaml.safe_load(config.read_text())
    data.update(
        source=f"manifest:{tmp_path / 'toy.tsv'}", source_options={}, eval_split="validation"
    )
    if start == "hub":
        data["model"] = f"{TINY_HUB}@subtitle"
    data["train"] = {
        **TINY_TRAIN,
        "max_steps": 6,
        "eval_max_new_tokens": 16,
        "precision": "fp32",
        "guards": [{"name": "own", "path": str(guard), "split": "validation"}],
    }
    config.write_text(yaml.safe_dump(data))
    assert main(["pipeline", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    out = _stages(captured.out)
    assert "refused" in out["promote"] and "own WER" in out["promote"]
    assert "best/ is the start model" in out["promote"] and "export" not in out
    assert "--force overrides" in captured.err
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "ct2").exists()
    # A re-run refuses again without training again; --force exports it.
    assert main(["pipeline", "--config", str(config)]) == 1
    assert "up to date" in _stages(capsys.readouterr().out)["train"]
    assert main(["pipeline", "--config", str(config), "--force"]) == 0
    forced = _stages(capsys.readouterr().out)
    assert "forced" in forced["promote"] and " ran " in forced["export"]
    assert (run / "ct2" / "model.bin").is_file()
    card = yaml.safe_load((run / "model_card.md").read_text().split("---")[1])
    if start == "hub":
        assert (card["base_model"], card["base_model_revision"]) == (TINY_HUB, "subtitle")
    else:  # a local folder is no hub model
        assert card.get("base_model") is None


def test_promotion_needs_an_out_of_domain_guard(tmp_path):
    from whisper_sv.workflows.pipeline import promotion_refusal

    summary = {"guards": ["lexin"], "domains": {"lexin": "in"}, "regressed": []}
    (tmp_path / "guards.json").write_text(json.dumps(summary))
    assert "no guard is out of domain" in promotion_refusal(tmp_path)
    summary = {**summary, "guards": ["lexin", "cv"], "domains": {"lexin": "in", "cv": "out"}}
    (tmp_path / "guards.json").write_text(json.dumps(summary))
    assert promotion_refusal(tmp_path) == ""
    summary["regressed"] = ["cv WER 44.00 -> 46.00 (+2.00, tolerance 0.5)"]
    (tmp_path / "guards.json").write_text(json.dumps(summary))
    assert "cv WER 44.00 -> 46.00" in promotion_refusal(tmp_path)
