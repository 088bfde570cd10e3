"""Tests of whisper_sv.models: references, processor, conversion, hub."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_sv.core.fsutil import cache_dir
from whisper_sv.models.bundled import BUNDLED_MODEL_BIN_BYTES, bundled_tokenizer_json
from whisper_sv.models.conversion import convert_ct2_to_transformers, export_ct2
from whisper_sv.models.processor import (
    NO_TIMESTAMPS_TOKEN_ID,
    VOCAB_SIZE,
    build_processor,
    processor_is_complete,
)
from whisper_sv.models.references import (
    ModelRef,
    ct2_dir,
    load_model,
    load_processor,
    resolve,
    transformers_dir,
)

SOT_SV_TRANSCRIBE = [
    50258,
    50273,
    50359,
    50363,
]  # <|startoftranscript|><|sv|><|transcribe|><|notimestamps|>


# --------------------------------------------------------------------------- processor


def test_processor_covers_the_model_vocabulary(processor):
    tok = processor.tokenizer
    assert len(tok) == VOCAB_SIZE
    assert tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50364, 51864]
    # timestamp decoding takes timestamp_begin as the last special id + 1
    assert tok.all_special_ids[-1] == NO_TIMESTAMPS_TOKEN_ID
    assert processor.feature_extractor.feature_size == 80


def test_processor_encodes_swedish_prefix(processor):
    tok = processor.tokenizer
    tok.set_prefix_tokens(language="swedish", task="transcribe")
    ids = tok("hej").input_ids
    assert ids[:4] == SOT_SV_TRANSCRIBE
    assert ids[-1] == 50257
    assert tok.convert_ids_to_tokens(ids[:4]) == [
        "<|startoftranscript|>",
        "<|sv|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "hej"
    text = "Hej, hur mår du? Åsa äter ölandskaka."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_processor_decodes_timestamps(processor):
    tok = processor.tokenizer
    hej = tok(" hej", add_special_tokens=False).input_ids
    ids = [50258, 50273, 50359, 50364, *hej, 50364 + 50, 50257]
    out = tok.decode(ids, output_offsets=True)
    assert out["offsets"] == [{"text": " hej", "timestamp": (0.0, 1.0)}]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "hej"


def test_processor_n_mels(processor):
    p = build_processor(bundled_tokenizer_json(), n_mels=128)
    features = p.feature_extractor(np.zeros(16000, np.float32), sampling_rate=16000)
    assert np.asarray(features.input_features).shape == (1, 128, 3000)


def test_build_processor_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        build_processor(tmp_path / "nope.json")


# --------------------------------------------------------------------------- tiny fixtures


def test_tiny_model_loads_and_generates(tiny_model, tiny_model_dir):
    import torch

    model, proc = tiny_model
    assert model.config.vocab_size == VOCAB_SIZE
    gc = model.generation_config
    assert gc.lang_to_id["<|sv|>"] == 50273
    assert gc.task_to_id == {"translate": 50358, "transcribe": 50359}
    assert gc.no_timestamps_token_id == 50363
    assert gc.forced_decoder_ids is None
    assert _processor_ok(proc)
    feats = proc.feature_extractor(np.zeros(8000, np.float32), sampling_rate=16000)
    x = torch.tensor(np.asarray(feats.input_features))
    with torch.no_grad():
        out = model.generate(x, language="sv", task="transcribe", max_new_tokens=5)
    assert out.shape[0] == 1 and out.shape[1] >= 1


def _processor_ok(proc) -> bool:
    return processor_is_complete(proc)


# --------------------------------------------------------------------------- resolver


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("WHISPER_SV_CACHE", str(path))
    return path


def _run_folder(root, tiny_model_dir, ct2=None):
    import shutil

    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("max_steps: 1\n")
    shutil.copytree(tiny_model_dir, run / "best")
    if ct2 is not None:
        shutil.copytree(ct2, run / "ct2")
    return run


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_SV_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("WHISPER_SV_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "whisper-sv")


def test_resolve_forms(tiny_model_dir, tiny_ct2_dir, tmp_path):
    assert resolve() == ModelRef("bundled:base", "bundled", None)
    r = resolve(str(tiny_model_dir))
    assert (r.kind, r.path) == ("transformers", tiny_model_dir.resolve())
    r = resolve(str(tiny_ct2_dir))
    assert (r.kind, r.path) == ("ct2", tiny_ct2_dir.resolve())
    run = _run_folder(tmp_path, tiny_model_dir)
    assert resolve(str(run)).kind == "run"
    hub = resolve("openai/whisper-small")
    assert (hub.kind, hub.path) == ("hub", None)
    assert resolve(r) is r


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("bundled:large", "bundled:base"),
        ("./no/such/folder", "bundled:base"),
        ("no-such-model", "transformers folder"),
        ("a/b/c", "run folder"),
    ],
)
def test_resolve_errors_name_the_valid_forms(ref, match):
    with pytest.raises(ValueError, match=match):
        resolve(ref)


def test_resolve_rejects_files_and_empty_folders(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="pass its folder"):
        resolve(str(tmp_path / "model.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model"):
        resolve(str(tmp_path / "empty"))


def test_hub_offline_names_local_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    for fn in (transformers_dir, ct2_dir):
        with pytest.raises(ValueError, match="bundled:base") as e:
            fn("someone/whisper-sv-test-model")
        assert "offline" in str(e.value)


def test_run_folder_uses_best_and_its_ct2(tiny_model_dir, tiny_ct2_dir, tmp_path, cache):
    run = _run_folder(tmp_path, tiny_model_dir, ct2=tiny_ct2_dir)
    assert transformers_dir(str(run)) == run / "best"
    assert ct2_dir(str(run)) == run / "ct2"


def test_run_folder_without_ct2_is_exported_into_the_cache(tiny_model_dir, tmp_path, cache):
    run = _run_folder(tmp_path, tiny_model_dir)
    out = ct2_dir(str(run))
    assert out.parent == cache
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    marker = (out / ".whisper-sv-source.json").stat().st_mtime_ns
    assert ct2_dir(str(run)) == out  # cached: not exported again
    assert (out / ".whisper-sv-source.json").stat().st_mtime_ns == marker


def test_load_model_and_processor_of_every_local_form(tiny_model_dir, tiny_ct2_dir, cache):
    import torch

    for ref in (tiny_model_dir, tiny_ct2_dir):
        proc = load_processor(str(ref))
        assert processor_is_complete(proc)
    model, proc = load_model(str(tiny_ct2_dir), dtype="float16")
    assert model.dtype == torch.float16
    assert not model.training
    assert model.generation_config.lang_to_id["<|sv|>"] == 50273


# --------------------------------------------------------------------------- conversion


def _ct2_greedy_logits(ct2_folder, feats: np.ndarray, prompt: list[int], max_length: int = 448):
    """CTranslate2's greedy tokens and the raw logits (float32) of every step."""
    import ctranslate2

    w = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", compute_type="float32")
    r = w.generate(
        ctranslate2.StorageView.from_array(feats),
        [prompt],
        beam_size=1,
        max_length=max_length,
        return_logits_vocab=True,
        suppress_blank=False,
        suppress_tokens=[],
    )[0]
    logits = np.stack([np.array(x) for x in r.logits[0]]).reshape(len(r.logits[0]), -1)
    return (
        r.sequences_ids[0],
        logits,
        np.array(w.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True)),
    )


def _hf_teacher_forced(model, feats: np.ndarray, prompt: list[int], tokens: list[int], n: int):
    """transformers' logits at the positions that predicted ``tokens`` (n steps)."""
    import torch

    ids = (prompt + tokens)[: len(prompt) + n - 1]
    with torch.no_grad():
        x = torch.from_numpy(feats)
        enc = model.model.encoder(x).last_hidden_state
        out = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([ids])).logits
    return out[0, len(prompt) - 1 :].numpy(), enc.numpy()


def test_convert_tiny_ct2_matches_weights_and_logits(tiny_model, tiny_ct2_dir, tmp_path):
    import torch

    original, _ = tiny_model
    out = convert_ct2_to_transformers(tiny_ct2_dir, tmp_path / "hf")
    model, proc = load_model(str(out))
    assert model.dtype == torch.float32
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # ctranslate2 stored float16: the round trip equals the original rounded to float16
    want = {k: v.detach() for k, v in original.state_dict().items()}
    for name, got in model.state_dict().items():
        ref = want[name].to(torch.float16).to(torch.float32)
        assert torch.equal(got, ref), name
    gc = model.generation_config
    assert gc.alignment_heads == original.generation_config.alignment_heads
    assert gc.suppress_tokens == original.generation_config.suppress_tokens
    assert gc.begin_suppress_tokens == [220, 50257]
    assert gc.decoder_start_token_id == 50258
    assert processor_is_complete(proc)

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 80, 3000)).astype(np.float32)
    tokens, ct2_logits, ct2_enc = _ct2_greedy_logits(
        tiny_ct2_dir, feats, SOT_SV_TRANSCRIBE, max_length=12
    )
    hf_logits, hf_enc = _hf_teacher_forced(model, feats, SOT_SV_TRANSCRIBE, tokens, len(ct2_logits))
    assert np.abs(hf_enc - ct2_enc).max() < 1e-3
    assert hf_logits.shape == ct2_logits.shape
    assert np.abs(hf_logits - ct2_logits).max() < 1e-3


def _edited_ct2(src, dst, edit):
    import shutil

    from whisper_sv.models import ct2_format

    shutil.copytree(src, dst)
    m = ct2_format.read_model_bin(src / "model.bin")
    variables, aliases = dict(m.variables), dict(m.aliases)
    edit(variables, aliases)
    ct2_format.write_model_bin(
        ct2_format.Ct2Model(m.spec, m.revision, variables, aliases), dst / "model.bin"
    )
    return dst


def test_convert_refuses_a_nonzero_k_bias(tiny_ct2_dir, tmp_path):
    def edit(v, a):
        name = "encoder/layer_1/self_attention/linear_0/bias"
        b = np.array(v[name])
        b[70] = 0.5  # d_model 64: index 70 lies in the k third
        v[name] = b

    bad = _edited_ct2(tiny_ct2_dir, tmp_path / "bad", edit)
    with pytest.raises(ValueError, match="k bias"):
        convert_ct2_to_transformers(bad, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_convert_refuses_unknown_variables_and_untied_projection(tiny_ct2_dir, tmp_path):
    def extra(v, a):
        v["decoder/mystery"] = np.zeros(3, np.float32)

    with pytest.raises(ValueError, match="mystery"):
        convert_ct2_to_transformers(
            _edited_ct2(tiny_ct2_dir, tmp_path / "a", extra), tmp_path / "x"
        )

    def untie(v, a):
        del a["decoder/projection/weight"]
        v["decoder/projection/weight"] = np.array(v["decoder/embeddings/weight"]) * 2

    with pytest.raises(ValueError, match="ties"):
        convert_ct2_to_transformers(
            _edited_ct2(tiny_ct2_dir, tmp_path / "b", untie), tmp_path / "y"
        )


def test_ct2_ref_is_converted_once_and_cached(tiny_ct2_dir, cache, tmp_path):
    import os
    import shutil

    src = tmp_path / "ct2"
    shutil.copytree(tiny_ct2_dir, src)
    out = transformers_dir(str(src))
    assert out.parent == cache and (out / "model.safetensors").is_file()
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert transformers_dir(str(src)) == out
    assert weights.stat().st_mtime_ns == stamp
    # touched, same bytes: still cached
    os.utime(src / "model.bin", ns=(1, 1))
    assert transformers_dir(str(src)) == out
    assert weights.stat().st_mtime_ns == stamp
    # changed bytes: converted again
    _edited_ct2(
        tiny_ct2_dir,
        tmp_path / "edited",
        lambda v, a: v.__setitem__("encoder/layer_norm/beta", v["encoder/layer_norm/beta"] * 0),
    )
    shutil.copy2(tmp_path / "edited" / "model.bin", src / "model.bin")
    assert transformers_dir(str(src)) == out
    assert weights.stat().st_mtime_ns != stamp
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp folders


# --------------------------------------------------------------------------- export


def test_export_ct2_folder_loads_offline_in_faster_whisper(tiny_ct2_dir, monkeypatch):
    from faster_whisper import WhisperModel

    names = {p.name for p in tiny_ct2_dir.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= names
    cfg = json.loads((tiny_ct2_dir / "config.json").read_text())
    assert cfg["lang_ids"][0] == 50259 and 50273 in cfg["lang_ids"]
    assert cfg["alignment_heads"] == [[1, 0], [1, 1]]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fw = WhisperModel(str(tiny_ct2_dir), device="cpu", compute_type="int8")
    segments, info = fw.transcribe(
        np.zeros(16000, np.float32),
        language="sv",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        max_new_tokens=5,
        vad_filter=False,
    )
    list(segments)
    assert info.language == "sv"
    assert fw.feat_kwargs["feature_size"] == 80  # read from our preprocessor_config.json


def test_export_ct2_validates(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        export_ct2(tiny_model_dir, tmp_path / "o", quantization="int4")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a CTranslate2 folder"):
        export_ct2(tiny_model_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="not a transformers folder"):
        export_ct2(tmp_path / "busy", tmp_path / "o")


def test_export_ct2_replaces_an_older_export(tiny_model_dir, tiny_ct2_dir, tmp_path):
    import shutil

    out = tmp_path / "ct2"
    shutil.copytree(tiny_ct2_dir, out)
    (out / "stale.txt").write_text("old")
    export_ct2(tiny_model_dir, out, quantization="float32")
    assert not (out / "stale.txt").exists()
    from whisper_sv.models import ct2_format

    m = ct2_format.read_model_bin(out)
    assert m["encoder/conv1/weight"].dtype == np.float32


# --------------------------------------------------------------------------- real model (slow)

CLIPS = ("clothes__jacket.mp3", "colors__yellow.mp3", "food__noodles.mp3", "furniture__desk.mp3")


@pytest.fixture(scope="module")
def bundled_hf(tmp_path_factory):
    """The bundled base converted into a fresh cache (so the conversion itself is exercised)."""
    import os
    import time

    old = os.environ.get("WHISPER_SV_CACHE")
    os.environ["WHISPER_SV_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    try:
        t0 = time.perf_counter()
        hf = transformers_dir("bundled:base")
        print(
            f"\nbundled -> transformers (assembly + conversion): {time.perf_counter() - t0:.1f} s"
        )
        yield hf, ct2_dir("bundled:base")
    finally:
        if old is None:
            os.environ.pop("WHISPER_SV_CACHE", None)
        else:
            os.environ["WHISPER_SV_CACHE"] = old


@pytest.fixture(scope="module")
def clips(sv_words_dir):
    """name -> 16 kHz audio: four sv-words clips and one three-word phrase built from others."""
    from faster_whisper import decode_audio

    out = {name: decode_audio(str(sv_words_dir / name)) for name in CLIPS}
    gap = np.zeros(8000, np.float32)
    words = ("food__bread.mp3", "colors__red.mp3", "furniture__chair.mp3")
    parts = [p for w in words for p in (decode_audio(str(sv_words_dir / w)), gap)]
    out["phrase"] = np.concatenate(parts)
    return out


def _fw_features(audio: np.ndarray) -> np.ndarray:
    """(1, 80, 3000) float32: faster-whisper's log-mel, zero-padded to 30 s as it does."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    feats = FeatureExtractor()(audio)[:, :-1]  # faster-whisper drops the last frame
    return pad_or_trim(feats)[None].astype(np.float32)


@pytest.mark.slow
def test_bundled_ct2_folder(bundled_hf):
    from faster_whisper import WhisperModel

    _, ct2 = bundled_hf
    assert (ct2 / "model.bin").stat().st_size == BUNDLED_MODEL_BIN_BYTES
    fw = WhisperModel(str(ct2), device="cpu", compute_type="int8")
    assert fw.model.is_multilingual and fw.model.n_mels == 80


@pytest.mark.slow
def test_bundled_conversion_matches_ctranslate2_logits(bundled_hf, clips):
    """Same log-mel in: encoder outputs and every greedy step's logits agree within 1e-3."""
    hf, ct2 = bundled_hf
    model, _ = load_model(str(hf))
    worst = 0.0
    translate = [50258, 50273, 50358, 50363]
    for name, audio in clips.items():
        feats = _fw_features(audio)
        for prompt in (SOT_SV_TRANSCRIBE, translate) if name == "phrase" else (SOT_SV_TRANSCRIBE,):
            tokens, ct2_logits, ct2_enc = _ct2_greedy_logits(ct2, feats, prompt, max_length=64)
            hf_logits, hf_enc = _hf_teacher_forced(model, feats, prompt, tokens, len(ct2_logits))
            assert len(tokens) >= 1
            assert hf_logits.shape == ct2_logits.shape == (len(ct2_logits), VOCAB_SIZE)
            assert np.abs(hf_enc - ct2_enc).max() < 5e-3, name
            diff = float(np.abs(hf_logits - ct2_logits).max())
            assert diff < 1e-3, (name, diff)
            # and the argmax path is the same: transformers would pick ctranslate2's tokens
            assert hf_logits[: len(tokens)].argmax(-1).tolist() == tokens
            worst = max(worst, diff)
    print(f"\nmax |logit difference| transformers vs CTranslate2: {worst:.2e}")


def _hf_greedy(model, processor, feats: np.ndarray) -> str:
    import torch

    with torch.no_grad():
        ids = model.generate(
            torch.from_numpy(feats), language="sv", task="transcribe", num_beams=1, do_sample=False
        )
    return processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def _fw_greedy(fw, audio: np.ndarray) -> str:
    segments, _ = fw.transcribe(
        audio,
        language="sv",
        task="transcribe",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
        no_speech_threshold=None,
        log_prob_threshold=None,
    )
    return "".join(s.text for s in segments).strip()


@pytest.mark.slow
def test_bundled_greedy_transcripts_equal_faster_whispers(bundled_hf, clips):
    from faster_whisper import WhisperModel

    hf, ct2 = bundled_hf
    model, processor = load_model(str(hf))
    fw = WhisperModel(str(ct2), device="cpu", compute_type="float32")
    for name, audio in clips.items():
        want = _fw_greedy(fw, audio)
        assert want, name
        assert _hf_greedy(model, processor, _fw_features(audio)) == want, name


@pytest.mark.slow
def test_export_round_trip_is_lossless(bundled_hf, clips, tmp_path):
    """bundled -> transformers -> export_ct2: same weights, same faster-whisper transcripts."""
    from faster_whisper import WhisperModel

    from whisper_sv.models import ct2_format

    hf, ct2 = bundled_hf
    out = export_ct2(hf, tmp_path / "export")
    a, b = ct2_format.read_model_bin(ct2), ct2_format.read_model_bin(out)
    assert a.spec == b.spec and a.aliases == b.aliases
    for name, arr in a.variables.items():
        assert b.variables[name].dtype == arr.dtype and np.array_equal(b.variables[name], arr), name
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (ct2 / "config.json").read_text()
    )
    original = WhisperModel(str(ct2), device="cpu", compute_type="int8")
    exported = WhisperModel(str(out), device="cpu", compute_type="int8")  # HF_HUB_OFFLINE=1
    for name, audio in clips.items():
        assert _fw_greedy(exported, audio) == _fw_greedy(original, audio), name
