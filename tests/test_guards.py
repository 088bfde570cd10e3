"""Real-speech guards: spec parsing, the regression rule, chrF agreement, guard stores made
from manifests, and splitting real sets by group so guard and test never share a phrase."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from whisper_sv.train.guards import GuardSpec, chrf, regressions


def test_spec_parses_text_and_yaml_forms_and_names_the_fix():
    spec = GuardSpec.parse("lexin=data/lexin.tsv,translate,limit=40")
    assert (spec.name, spec.path, spec.translate, spec.limit) == (
        "lexin",
        "data/lexin.tsv",
        True,
        40,
    )
    assert spec.columns() == [
        "lexin WER",
        "lexin CER",
        "lexin translate English %",
        "lexin translate chrF",
    ]
    assert GuardSpec.coerce({"name": "w", "path": "s", "split": "test"}).split == "test"
    with pytest.raises(ValueError, match="NAME=PATH"):
        GuardSpec.parse("just-a-path.tsv")
    with pytest.raises(ValueError, match="unknown flag 'beam'.*translate, split=S, limit=N, long"):
        GuardSpec.parse("a=b.tsv,beam")
    with pytest.raises(ValueError, match="unknown option"):
        GuardSpec.coerce({"name": "a", "path": "b", "beam": 1})


def test_a_guard_says_its_domain_and_may_have_its_own_tolerance():
    spec = GuardSpec.parse("cv=data/cv.tsv,domain=out,tolerance=0.5")
    assert (spec.domain, spec.tolerance) == ("out", 0.5)
    assert GuardSpec.coerce({"name": "a", "path": "b", "domain": "in"}).tolerance < 0
    with pytest.raises(ValueError, match="domain 'far'.*'in'.*'out'"):
        GuardSpec.parse("a=b.tsv,domain=far")
    # Its own tolerance decides for its WER column; the others keep the run's.
    specs = [spec, GuardSpec("lexin", "l.tsv", domain="in")]
    start = {"cv WER": 44.0, "lexin WER": 70.0}
    now = {"cv WER": 44.6, "lexin WER": 71.5}
    bad = regressions(now, start, wer_tolerance=2.0, chrf_tolerance=100, specs=specs)
    assert [(c.column, c.tolerance) for c in bad] == [("cv WER", 0.5)]
    assert regressions(now, start, wer_tolerance=2.0, chrf_tolerance=100) == []


def test_card_lines_say_which_guards_are_out_of_domain():
    from whisper_sv.train.selection_report import guard_lines

    data = {
        "guards": ["cv-dev", "lexin"],
        "domains": {"cv-dev": "out", "lexin": "in"},
        "guard_wer_tolerance": {"cv-dev": 0.5, "lexin": 1.0},
        "tolerance": {"wer": 1.0},
        "start": {"cv-dev WER": 44.0, "lexin WER": 70.0},
        "best": {"values": {"cv-dev WER": 43.5, "lexin WER": 60.0}},
    }
    assert guard_lines(data) == [
        "cv-dev (out of domain; may lose 0.5 WER points): WER 44.00 -> 43.50",
        "lexin (in domain; may lose 1 WER points): WER 70.00 -> 60.00",
    ]


def test_long_form_guard_spec_has_a_segments_column_and_no_translate_check():
    spec = GuardSpec.parse("long=data/lexin.tsv,long_form=90")
    assert spec.long_form == 90.0
    assert spec.columns() == ["long WER", "long CER", "long segments"]
    with pytest.raises(ValueError, match="give the translate check its own guard"):
        GuardSpec.parse("long=data/lexin.tsv,long_form=90,translate")
    with pytest.raises(ValueError, match="long_form must be >= 0"):
        GuardSpec("long", "x.tsv", long_form=-1)


def test_selection_score_is_the_validation_wer_or_its_mean_with_the_guard_wers():
    from whisper_sv.train.guards import selection_score

    values = {"a WER": 60.0, "a CER": 1.0, "a translate chrF": 5.0, "b WER": 90.0, "b segments": 9}
    assert selection_score("validation", 30.0, values) == 30.0
    assert selection_score("validation+guards", 30.0, values) == pytest.approx(60.0)
    assert selection_score("validation+guards", 30.0, {}) == 30.0


def test_train_config_reads_guards_from_yaml_and_overrides(tmp_path):
    from whisper_sv.core.config import load_options, parse_overrides
    from whisper_sv.train.run import TrainConfig

    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("guards:\n  - {name: words, path: w.tsv, translate: true}\n")
    cfg = load_options(TrainConfig, yaml_file)
    assert cfg.guards == (GuardSpec("words", "w.tsv", translate=True),)
    cfg = load_options(TrainConfig, None, parse_overrides(["guards=[a=x.tsv, b=y.tsv]"]))
    assert [g.name for g in cfg.guards] == ["a", "b"]
    with pytest.raises(ValueError, match="two guards named 'a'"):
        load_options(TrainConfig, None, parse_overrides(["guards=[a=x.tsv, a=y.tsv]"]))


def test_regression_rule_uses_wer_and_chrf_tolerances_not_cer():
    start = {"w WER": 40.0, "w CER": 20.0, "w translate chrF": 100.0}
    same = {"w WER": 40.5, "w CER": 29.0, "w translate chrF": 91.0}
    assert regressions(same, start, wer_tolerance=0.5, chrf_tolerance=10) == []
    worse = {"w WER": 40.6, "w CER": 20.0, "w translate chrF": 89.0}
    bad = regressions(worse, start, wer_tolerance=0.5, chrf_tolerance=10)
    assert [c.column for c in bad] == ["w WER", "w translate chrF"]
    assert bad[0].worse_by == pytest.approx(0.6) and bad[1].worse_by == pytest.approx(11.0)
    assert "40.00 -> 40.60" in bad[0].describe()
    # A long-form guard's segment count is reported, never judged.
    assert (
        regressions({"w segments": 1.0}, {"w segments": 40.0}, wer_tolerance=0, chrf_tolerance=0)
        == []
    )
    # English share: points lost against english_tolerance; chrF is not judged by default.
    start_en = {"w translate English %": 80.0, "w translate chrF": 100.0}
    kept = {"w translate English %": 71.0, "w translate chrF": 30.0}
    assert (
        regressions(kept, start_en, wer_tolerance=0.5, chrf_tolerance=100, english_tolerance=10)
        == []
    )
    lost = {"w translate English %": 20.0, "w translate chrF": 30.0}
    bad = regressions(lost, start_en, wer_tolerance=0.5, chrf_tolerance=100, english_tolerance=10)
    assert [c.column for c in bad] == ["w translate English %"] and bad[0].worse_by == 60.0
    better = {"w WER": 30.0, "w translate chrF": 100.0}
    assert regressions(better, start, wer_tolerance=0.0, chrf_tolerance=0.0) == []


def test_english_share_tells_english_translations_from_swedish_answers():
    from whisper_sv.train.guards import english_share

    # What the pretrained model and a fine-tune that forgot translation answered (measured).
    english = ["Show the ticket.", "Swing to the higher.", "Turn off the car belt.", "Bye!"]
    swedish = ["visar biljetten", "svänger till höger", "spänner fast bilbältet", "torka sig"]
    assert english_share(english) == 100.0
    assert english_share(swedish) == 0.0
    assert english_share(english[:2] + swedish[:1] + [""]) == 50.0  # empty is not English
    assert english_share([]) == 100.0


def test_only_english_answers_become_translation_labels():
    """The pretrained base's answers to the translate task for training clips (measured):
    English ones are kept; a Swedish word spelt back, a loop or nothing are not."""
    from whisper_sv.train.translation_labels import usable_translation

    kept = [" See you later.", " We're close.", " Sleeps.", " Bye!"]
    spelt_back = [" Hengel", " Fihlar", " Halspand.", " Smirjör"]
    assert all(map(usable_translation, kept))
    assert not any(map(usable_translation, spelt_back))
    assert not usable_translation(" " + "I'm going. " * 20)  # a loop
    assert not usable_translation("  ")


def test_chrf_agreement_is_100_for_identical_and_low_for_another_language():
    english = ["washes his hair", "takes the bus", "", "signs up for a course"]
    assert chrf(english, english) == pytest.approx(100.0)
    swedish = ["tvättar håret", "åker buss", "", "anmäler sig till en kurs"]
    assert chrf(swedish[:2] + swedish[3:], english[:2] + english[3:]) < 20
    assert chrf(swedish, english) < 40  # the empty pair agrees, the rest does not
    assert chrf(["washes her hair", "takes a bus", "", "signs up for the course"], english) > 50
    with pytest.raises(ValueError):
        chrf(["a"], ["a", "b"])


def _write_manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(folder / "manifest.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "sentence", "theme"])
        w.writerows(rows)
    return folder / "manifest.tsv"


def test_split_by_group_keeps_every_group_in_one_part(tmp_path):
    from whisper_sv.data.realsets import split_by_group

    folder = tmp_path / "phrases"
    folder.mkdir()
    rows = [(f"{t}-{i}.mp3", f"fras {t} {i}", f"tema {t}") for t in range(12) for i in range(t + 1)]
    _write_manifest(folder, rows)
    split = split_by_group(
        folder, tmp_path / "out", shares={"guard": 0.5, "test": 0.5}, group_column="theme"
    )
    guard, test = set(split.groups["guard"]), set(split.groups["test"])
    assert guard and test and not guard & test
    assert guard | test == {f"tema {t}" for t in range(12)}
    assert split.counts["guard"] + split.counts["test"] == len(rows)
    assert abs(split.counts["guard"] - split.counts["test"]) <= 12  # at most one group apart
    with open(split.parts["test"], encoding="utf-8") as f:
        written = list(csv.DictReader(f, delimiter="\t"))
    assert {r["group"] for r in written} == test
    assert all(Path(r["path"]).is_absolute() for r in written)
    again = split_by_group(
        folder, tmp_path / "again", shares={"guard": 0.5, "test": 0.5}, group_column="theme"
    )
    assert again.groups == split.groups  # deterministic
    other = split_by_group(
        folder, tmp_path / "o", shares={"guard": 0.5, "test": 0.5}, group_column="theme", seed=3
    )
    assert other.groups != split.groups


def test_split_of_the_real_sets_holds_out_new_words(sv_words_dir, tmp_path):
    from whisper_sv.data.realsets import split_by_group

    lexin = sv_words_dir.parent / "lexin-phrases"
    if not (lexin / "manifest.tsv").is_file():
        pytest.skip(f"{lexin} not found (shared data absent)")
    split = split_by_group(lexin, tmp_path, shares={"guard": 1, "test": 1}, group_column="theme")
    assert sum(split.counts.values()) == 368
    words = split_by_group(sv_words_dir, tmp_path, shares={"guard": 1, "test": 1})
    assert sum(words.counts.values()) == 164
    assert not set(words.groups["guard"]) & set(words.groups["test"])


def test_guard_store_is_built_once_from_a_manifest(sv_words_dir, tmp_path, processor):
    from whisper_sv.train.guards import prepare_guard_store

    with open(sv_words_dir / "manifest.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:6]
    tsv = tmp_path / "six.tsv"
    lines = ["path\tsentence"] + [f"{sv_words_dir / r['path']}\t{r['sentence']}" for r in rows]
    lines.append(f"{tmp_path / 'missing.mp3'}\tsaknas")  # reported in rejects, not fatal
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = GuardSpec("six", str(tsv))
    store, split = prepare_guard_store(
        spec, model="bundled:base", cache_root=tmp_path, processor=processor
    )
    assert split == "guard" and store.num_rows("guard") == 6
    assert [r.reason for r in store.rejects()] and "missing.mp3" in store.rejects()[0].audio
    mtime = (store.path / "manifest.json").stat().st_mtime_ns
    again, _ = prepare_guard_store(
        spec, model="bundled:base", cache_root=tmp_path, processor=processor
    )
    assert again.path == store.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == mtime  # reused, not rebuilt
    with pytest.raises(FileNotFoundError, match="neither a manifest TSV nor a feature store"):
        prepare_guard_store(
            GuardSpec("x", str(tmp_path / "nope.tsv")), model="m", cache_root=tmp_path
        )


def test_translation_uses_the_start_model_unless_the_run_guarded_it(tmp_path):
    import yaml

    from whisper_sv.infer.translation_model import translation_model

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "ct2").mkdir()
    config = {"model": "bundled:base", "train": {"guards": [{"name": "w", "path": "w.tsv"}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for ref in (run, run / "best", run / "ct2"):
        choice = translation_model(str(ref))
        assert choice.model == "bundled:base"
        assert "not checked on translation" in choice.note and "translate: true" in choice.note
    config["train"]["guards"][0]["translate"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert translation_model(str(run)).model == str(run)
    assert translation_model(str(run)).note == ""
    assert translation_model("bundled:base").model == "bundled:base"  # not a run: as it is


def test_example_guarded_config_loads():
    from whisper_sv.core.config import load_options
    from whisper_sv.train.run import TrainConfig

    example = Path(__file__).resolve().parents[1] / "examples" / "train-guarded.yaml"
    cfg = load_options(TrainConfig, example)
    assert [g.name for g in cfg.guards] == ["phrases", "words", "long-form", "cv-dev"]
    assert cfg.guards[2].long_form == 60 and cfg.select == "validation+guards"
    assert (cfg.guards[3].domain, cfg.guards[3].tolerance) == ("out", 0.5)
    assert cfg.interpolate == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7) and cfg.timestamp_share == 0.5
    assert (cfg.distill, cfg.distill_temperature) == (0.5, 2.0)
    assert cfg.guards[0].translate and cfg.translate_share == 0.5
    assert cfg.translate_sources == ("manifest",)


def _summary(best_step, note="", kept_start=False, raw_regressed=()):
    return {
        "best": {"step": best_step, "note": note, "values": {}},
        "kept_start": kept_start,
        "best_validation_any_guards": {"step": 90, "wer": 72.1, "regressed": list(raw_regressed)},
    }


def test_the_verdict_names_best_or_every_candidate_a_guard_refused(tmp_path):
    from whisper_sv.train.selection_report import (
        INTERPOLATION_CSV,
        MixRow,
        verdict,
        write_interpolation,
    )

    lost = "cv-dev WER 43.94 -> 45.00 (+1.06, tolerance 0.5)"
    also = "lexin-phrases WER 92.45 -> 96.23 (+3.78, tolerance 0.5)"
    rows = [
        MixRow(0.2, 99.2, 47.3, {"cv-dev WER": 45.0}, (lost, also)),
        MixRow(0.3, 96.0, 45.4, {"cv-dev WER": 43.6}, ()),
    ]
    write_interpolation(tmp_path, rows, from_step=90)
    csv_path = tmp_path / INTERPOLATION_CSV
    # The start model kept: each refused candidate with every guard it lost, the held mix not.
    raw = "cv-dev WER 43.94 -> 55.71 (+11.77, tolerance 0.5)"
    text = verdict(_summary(0, kept_start=True, raw_regressed=(raw,)), csv_path)
    assert text.startswith("best/ is the start model: no fine-tuned model kept every")
    assert f"step 90 (the best on validation): {raw}; the 0.2 mix: {lost}, {also}." in text
    assert "0.3 mix" not in text
    # Nothing beat the start model on validation: no guard is blamed.
    plain = verdict(_summary(0), tmp_path / "absent.csv")
    assert plain == "best/ is the start model: no fine-tuned model scored better on validation."
    # A kept model is named, a mix by its weights.
    mix = "WiSE-FT interpolation: 0.3 x step 90 + 0.7 x the start model"
    assert verdict(_summary(90, note=mix), csv_path) == (
        f"best/ is the {mix}: it kept every real-speech guard."
    )
    assert verdict(_summary(125), csv_path).startswith("best/ is step 125: it kept")
