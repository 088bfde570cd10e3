"""Hub models at a revision (``ORG/NAME@REVISION``), offline from a hub cache in the hub's own
layout: references, the conversions cached by commit, where a model comes from (the card),
and the commands ``transcribe``, ``live``, ``evaluate`` and ``train`` started from one.

The app, pipeline, demo and tune take the same references: their tests are in test_app.py,
test_pipeline.py and test_tune.py (``*_hub_*``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import BASE_HUB, FAST_TRAIN, TINY_HUB

from whisper_sv.cli.main import main
from whisper_sv.models.hub import HubModel, cached_hub_models
from whisper_sv.models.origin import model_origin
from whisper_sv.models.references import ct2_dir, load_model, resolve, transformers_dir

LEXIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexin-phrases"
PHRASES = ("spanner_fast_bilbaltet.mp3", "svanger_till_vanster.mp3", "drar_ner_rullgardinen.mp3")


@pytest.fixture(scope="module")
def phrases() -> list[Path]:
    """Three real Swedish phrases of ../shared/data/lexin-phrases (skips when absent)."""
    paths = [LEXIN / name for name in PHRASES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"{LEXIN} not found (shared data absent)")
    return paths


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "hub"),
    [
        ("KBLab/kb-whisper-small", HubModel("KBLab/kb-whisper-small", None)),
        ("KBLab/kb-whisper-small@subtitle", HubModel("KBLab/kb-whisper-small", "subtitle")),
        ("openai/whisper-base@refs/pr/7", HubModel("openai/whisper-base", "refs/pr/7")),
        ("a/b@v1.0", HubModel("a/b", "v1.0")),
        ("a/b@" + "0" * 40, HubModel("a/b", "0" * 40)),
    ],
)
def test_hub_references_name_a_revision(ref, hub):
    mref = resolve(ref)
    assert (mref.kind, mref.path, mref.hub) == ("hub", None, hub)
    assert hub.ref == ref


@pytest.mark.parametrize("ref", ["a/b@", "a/b@x..y", "a/b@-rf", "a/b@x y", "a/b/c@main", "@main"])
def test_malformed_revisions_are_refused_naming_the_forms(ref):
    with pytest.raises(ValueError, match=r"ORG/NAME\[@REVISION\]"):
        resolve(ref)


def test_a_branch_a_tag_and_a_commit_resolve_offline(tiny_hub):
    main_commit = tiny_hub.commits[f"{TINY_HUB}@main"]
    subtitle = tiny_hub.commits[f"{TINY_HUB}@subtitle"]
    snapshots = tiny_hub.path / "models--sv-test--whisper-tiny" / "snapshots"
    # No revision: the default branch, a CTranslate2-only commit faster-whisper loads as it is.
    assert ct2_dir(TINY_HUB) == snapshots / main_commit
    assert ct2_dir(f"{TINY_HUB}@main") == snapshots / main_commit
    # A tag and the commit it stands for: the same transformers-only snapshot.
    assert transformers_dir(f"{TINY_HUB}@subtitle") == snapshots / subtitle
    assert transformers_dir(f"{TINY_HUB}@{subtitle}") == snapshots / subtitle
    # The picker's list: each cached branch and tag, the default branch without "@main".
    assert cached_hub_models() == [TINY_HUB, f"{TINY_HUB}@subtitle"]


def test_a_revision_not_cached_offline_names_the_fix_and_the_cached_ones(tiny_hub):
    with pytest.raises(ValueError) as err:
        ct2_dir(f"{TINY_HUB}@strict")
    said = str(err.value)
    assert "not available offline" in said and "HF_HUB_OFFLINE unset" in said
    assert f"holds {TINY_HUB} at: main, subtitle" in said and "bundled:base" in said
    with pytest.raises(ValueError, match="holds no revision of sv-test/none"):
        transformers_dir("sv-test/none@main")


def test_the_command_line_says_so_in_one_line(tiny_hub, capsys, tmp_path):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"")
    assert main(["transcribe", "--model", f"{TINY_HUB}@strict", str(clip)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("whisper-sv transcribe: error: hub model")
    assert "not available offline" in err and "main, subtitle" in err


# --------------------------------------------------------------------------- conversions


def test_a_transformers_only_revision_is_converted_to_ct2_once_by_its_commit(tiny_hub):
    from faster_whisper import WhisperModel

    hub_files = _files(tiny_hub.path)
    commit = tiny_hub.commits[f"{TINY_HUB}@subtitle"]
    out = ct2_dir(f"{TINY_HUB}@subtitle")
    assert out.name == f"{commit}-ct2" and out.parent.name == "models--sv-test--whisper-tiny"
    assert out.parent.parent.name == "hub"  # $WHISPER_SV_CACHE/hub/models--ORG--NAME/
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    WhisperModel(str(out), device="cpu", compute_type="int8")  # what the ct2 backend loads
    marker = out / ".whisper-sv-source.json"
    stamp = marker.stat().st_mtime_ns
    # The commit is the same: the second load reads the conversion, the same name by commit.
    assert ct2_dir(f"{TINY_HUB}@{commit}") == out
    assert marker.stat().st_mtime_ns == stamp
    assert _files(tiny_hub.path) == hub_files  # the hub cache is left as the hub wrote it


def test_a_ct2_only_revision_is_converted_to_transformers_for_training(tiny_hub, tiny_model):
    import torch

    commit = tiny_hub.commits[f"{TINY_HUB}@main"]
    folder = transformers_dir(TINY_HUB)
    assert folder.name == f"{commit}-hf"
    model, processor = load_model(TINY_HUB)
    reference, _ = tiny_model
    # The weights the hub cache holds (the tiny model at float16) come back in float32.
    for (name, got), want in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want.half().float(), msg=name)
    assert processor.tokenizer.convert_tokens_to_ids("<|sv|>") == 50273


# --------------------------------------------------------------------------- origin, card


def test_a_model_origin_names_the_hub_model_never_a_local_path(tiny_hub, tiny_model_dir):
    bundled = model_origin("bundled:base")
    assert (bundled.hub_id, bundled.revision, bundled.commit) == ("openai/whisper-base", None, None)
    assert (
        bundled.markdown()
        == "`openai/whisper-base` (its copy bundled with whisper-sv, `bundled:base`)"
    )
    hub = model_origin(f"{TINY_HUB}@subtitle")
    commit = tiny_hub.commits[f"{TINY_HUB}@subtitle"]
    assert (hub.hub_id, hub.revision, hub.commit) == (TINY_HUB, "subtitle", commit)
    assert hub.markdown() == f"`{TINY_HUB}@subtitle` (hub commit `{commit}`)"
    assert hub.title == f"{TINY_HUB}@subtitle" and model_origin(TINY_HUB).title == TINY_HUB
    local = model_origin(str(tiny_model_dir))
    assert local.hub_id is None and local.local_name == tiny_model_dir.name
    assert str(tiny_model_dir) not in local.markdown()


def test_a_card_shows_paths_relative_to_the_run_or_by_name(tmp_path):
    from whisper_sv.core.run_metrics import model_card

    home = tmp_path / "demo-out"
    card = model_card(
        model="`openai/whisper-base`",
        title="openai/whisper-base",
        base_model="openai/whisper-base",
        store=str(home / "store"),
        data={},
        settings={
            "cache_dir": "/root/.cache/whisper-sv/encoder",
            "guards": [{"name": "cv", "path": str(home / "real" / "cv-dev-guard.tsv")}],
            "relative": "data/x.tsv",
            "outside": "/srv/data/cv-dev/manifest.tsv",
        },
        rows=[],
        best_step=None,
        best_wer=None,
        home=home,
    )
    assert "on the feature store `store`" in card
    assert "'path': 'real/cv-dev-guard.tsv'" in card
    assert "| cache_dir | whisper-sv/encoder |" in card
    assert "| relative | data/x.tsv |" in card and "| outside | cv-dev/manifest.tsv |" in card
    assert str(tmp_path) not in card and "/root" not in card
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "openai/whisper-base" and "base_model_revision" not in front


# --------------------------------------------------------------------------- commands


def test_transcribe_serves_a_hub_revision_offline(base_hub_cache, monkeypatch, phrases, capsys):
    """``transcribe --model ORG/NAME@REVISION``: the bundled weights from the hub cache give
    the bundled model's own transcript of real Swedish."""
    from conftest import use_hub_cache

    use_hub_cache(monkeypatch, base_hub_cache)
    clip = str(phrases[0])
    assert main(["transcribe", "--model", f"{BASE_HUB}@main", clip]) == 0
    from_hub = capsys.readouterr().out
    assert main(["transcribe", "--model", "bundled:base", clip]) == 0
    assert from_hub == capsys.readouterr().out and from_hub.strip()


def test_live_captions_from_a_hub_revision(base_hub_cache, monkeypatch, phrases, capsys):
    from conftest import use_hub_cache

    use_hub_cache(monkeypatch, base_hub_cache)
    rc = main(["live", str(phrases[1]), "--speed", "0", "--model", BASE_HUB, "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    lines = [x for x in captured.out.splitlines() if x.startswith("[")]
    assert lines and "words confirmed" in captured.err


def test_evaluate_a_hub_model_at_a_commit(tiny_hub, sv_words_dir, tmp_path, capsys):
    manifest = tmp_path / "manifest.tsv"
    rows = (sv_words_dir / "manifest.tsv").read_text(encoding="utf-8").splitlines()[:3]
    body = [f"{sv_words_dir / r.split(chr(9))[0]}\t{r.split(chr(9))[1]}" for r in rows[1:]]
    manifest.write_text("\n".join(["path\tsentence", *body]) + "\n", encoding="utf-8")
    ref = f"{TINY_HUB}@{tiny_hub.commits[f'{TINY_HUB}@subtitle']}"
    out = tmp_path / "report"
    assert main(["evaluate", "--model", ref, "--manifest", str(manifest), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == ref and report["n"] == 2
    assert f"# Evaluation of `{ref}`" in (out / "report.md").read_text()


def test_train_starts_from_a_ct2_only_hub_revision_and_its_card_names_it(
    tiny_hub, tiny_store, tmp_path, one_torch_thread
):
    run = tmp_path / "runs" / "kb"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**FAST_TRAIN, "max_steps": 3, "eval_steps": 3}))
    argv = ["train", "--features", str(tiny_store), "--out", str(run), "--model", TINY_HUB]
    assert main([*argv, "--config", str(config)]) == 0
    commit = tiny_hub.commits[f"{TINY_HUB}@main"]
    info = yaml.safe_load((run / "config.yaml").read_text())
    assert info["model"] == TINY_HUB
    assert info["model_origin"] == {
        "ref": TINY_HUB,
        "hub_id": TINY_HUB,
        "revision": "main",
        "commit": commit,
        "local_name": None,
    }
    card = (run / "model_card.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert (front["base_model"], front["base_model_revision"]) == (TINY_HUB, "main")
    assert f"Fine-tuned from `{TINY_HUB}@main` (hub commit `{commit}`)" in card
    assert f"on the feature store `{tiny_store.parent.name}/{tiny_store.name}`" in card
    # Nothing on a published card is a path of this machine.
    assert not re.search(r"(^|[\s`'(|])/[\w.-]+/", card), "an absolute path on the card"
    assert str(Path.home()) not in card
    # best/ is a transformers model, itself a model reference now.
    assert resolve(str(run)).kind == "run" and (run / "best" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow  # converts the 294 MB transformers revision of Whisper base (20 s here)
def test_a_transformers_only_revision_of_whisper_base_is_served_by_ct2_after_one_conversion(
    base_hub_subtitle, monkeypatch, tmp_path, phrases
):
    """KB-Whisper's ``subtitle`` case: transformers weights only. The ct2 backend serves it
    after one conversion (timed in bench/bench_hub_models.py), and its transcripts of real
    Swedish are the bundled CTranslate2 model's: the conversion loses nothing."""
    from conftest import use_hub_cache

    from whisper_sv.infer.transcriber import Transcriber

    use_hub_cache(monkeypatch, base_hub_subtitle)
    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "cache"))  # converts afresh
    ref = f"{BASE_HUB}@subtitle"
    served = Transcriber(ref, backend="ct2", device="cpu")
    commit = base_hub_subtitle.commits[ref]
    folder = ct2_dir(ref)
    assert folder.name == f"{commit}-ct2"
    bundled = Transcriber("bundled:base", backend="ct2", device="cpu")
    for clip in phrases:
        assert served.transcribe(clip).text == bundled.transcribe(clip).text, clip.name
    marker = (folder / ".whisper-sv-source.json").stat().st_mtime_ns
    Transcriber(ref, backend="ct2", device="cpu")  # the second load reads the cache
    assert (folder / ".whisper-sv-source.json").stat().st_mtime_ns == marker


def test_online_a_download_that_fails_says_why_and_what_is_cached(tiny_hub, monkeypatch):
    """Online, a revision the cache lacks is downloaded; when that fails (here: a hub endpoint
    on a closed local port, so no network is used) the error says why and what is cached."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError) as err:
        ct2_dir(f"{TINY_HUB}@strict")
    said = str(err.value)
    assert "could not be downloaded" in said and "check the name and revision" in said
    assert f"holds {TINY_HUB} at: main, subtitle" in said
    assert ct2_dir(f"{TINY_HUB}@main").is_dir()  # a cached revision needs no network
