"""Data-centric experiments: fair conditions (same sentences / same test clips), the recipe,
and the speaker adaptation run end to end on the tiny model with real recordings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource
from whisper_sv.workflows.experiments import ExperimentOptions, run_experiment, speaker


def _items(options: SyntheticOptions, split: str):
    return list(SyntheticSource(options).items(split))


def test_voice_conditions_differ_only_in_voices():
    o = ExperimentOptions(train_clips=16, validation_clips=4, test_clips=6)
    counts = {"train": 16, "validation": 4, "test": 6}
    one = SyntheticOptions(voices_train=(o.one_voice,), speakers_per_voice=1, **counts)
    many = SyntheticOptions(voices_train=o.many_voices, speakers_per_voice=1, **counts)
    a, b = _items(one, "train"), _items(many, "train")
    assert [i.sentence for i in a] == [i.sentence for i in b]  # equal text, equal clip count
    assert len({i.speaker for i in a}) == 1 and len({i.speaker for i in b}) == 8
    for split in ("validation", "test"):  # the same held-out clips in both conditions
        assert [(i.sentence, i.speaker) for i in _items(one, split)] == [
            (i.sentence, i.speaker) for i in _items(many, split)
        ]
    test_voices = {i.meta["variant"] for i in _items(many, "test")}
    assert not test_voices & set(o.many_voices)  # tested on unseen voices


def test_noisy_test_set_holds_the_clean_test_clips():
    full = SyntheticOptions(train=20, validation=5, test=6)
    test_only = SyntheticOptions(train=0, validation=0, test=6)
    assert [i.id for i in _items(full, "test")] == [i.id for i in _items(test_only, "test")]
    assert SyntheticSource(test_only).splits() == ["test"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"warmup_steps": 60}, "warmup_steps must be in"),
        ({"one_voice": "f5"}, "should be one of many_voices"),
        ({"many_voices": ("m1",), "one_voice": "m1"}, "at least 2 voices"),
        ({"speaker_fractions": (0.5, 0.5, 0.0)}, "three shares > 0"),
        ({"snrs": ()}, "at least one noise level"),
    ],
)
def test_options_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        ExperimentOptions(**changes)


def test_recipe_is_the_cpu_fast_path():
    cfg = ExperimentOptions(steps=60, evals=3, lr=3e-4).train_config({"batch_size": 8})
    assert cfg.freeze_encoder and cfg.cache_encoder and cfg.uses_encoder_cache
    assert (cfg.max_steps, cfg.eval_steps, cfg.save_steps, cfg.lr) == (60, 20, 20, 3e-4)
    assert cfg.batch_size == 8  # overrides win
    with pytest.raises(ValueError, match="unknown option"):
        ExperimentOptions().train_config({"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("accents")


def test_stores_of_the_same_shape_never_share_encoder_outputs(tmp_path):
    from whisper_sv.workflows.experiments import _Lab

    o = ExperimentOptions()
    lab = _Lab(tmp_path, o, o.train_config(), progress=False)
    one, many = lab.cache_dir(tmp_path / "voices-1"), lab.cache_dir(tmp_path / "voices-8")
    assert one != many and Path(one).parent == Path(many).parent == tmp_path / "cache"
    shared = _Lab(tmp_path, o, o.train_config({"cache_dir": "/data/cache"}), progress=False)
    assert shared.cache_dir(tmp_path / "clean") == "/data/cache/clean"


def test_speaker_experiment_needs_the_recordings(tmp_path):
    with pytest.raises(FileNotFoundError, match="sv-words"):
        speaker(tmp_path / "out", words=tmp_path / "nowhere")


def test_speaker_adaptation_end_to_end(sv_words_dir, tiny_model_dir, tmp_path):
    # 16 of the real recordings, by absolute path: a small copy of the word list.
    lines = (sv_words_dir / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    words = tmp_path / "words"
    words.mkdir()
    rows = [ln.split("\t") for ln in lines[1:17]]
    (words / "manifest.tsv").write_text(
        "path\tsentence\n" + "".join(f"{sv_words_dir / p}\t{s}\n" for p, s in rows),
        encoding="utf-8",
    )
    options = ExperimentOptions(
        model=str(tiny_model_dir),
        steps=2,
        warmup_steps=0,
        batch_size=2,
        evals=1,
        speaker_fractions=(0.5, 0.2, 0.3),
    )
    out = tmp_path / "exp"
    overrides = {"eval_max_new_tokens": 3, "eval_batch_size": 4}
    result = speaker(out, options, words=words, train_overrides=overrides, progress=False)
    pretrained, adapted = result.rows
    assert pretrained.condition == "pretrained" and pretrained.train_seconds == 0
    assert adapted.test == "held-out words" and adapted.n == pretrained.n > 0
    assert adapted.train_seconds > 0 and adapted.best_step in (1, 2)
    # No held-out word was trained on.
    from whisper_sv.data.store import FeatureStore

    store = FeatureStore(out / "stores" / "sv-words")
    train_words = {r["sentence"] for r in store.metadata("train", ["sentence"])}
    test_words = {r["sentence"] for r in store.metadata("test", ["sentence"])}
    assert train_words and test_words and not train_words & test_words
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["condition"] for r in data["rows"]] == ["pretrained", adapted.condition]
    assert (out / "results.png").is_file() and "| pretrained |" in result.report.read_text()
    # A re-run reuses the store, the run and the evaluations.
    evals = sorted(Path(out / "evals").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in evals]
    again = speaker(out, options, words=words, train_overrides=overrides, progress=False)
    assert [r.wer for r in again.rows] == [r.wer for r in result.rows]
    assert [p.stat().st_mtime_ns for p in evals] == stamps
