"""Tests of whisper_sv.models.ct2_format: the CTranslate2 model.bin reader and writer."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from whisper_sv.models import ct2_format
from whisper_sv.models.ct2_format import Ct2FormatError, Ct2Model


def _sample_model() -> Ct2Model:
    rng = np.random.default_rng(0)
    variables = {
        "a/weight": rng.standard_normal((4, 3)).astype(np.float16),
        "a/bias": rng.standard_normal(4).astype(np.float32),
        "b/weight": rng.integers(-127, 127, (2, 5), dtype=np.int8),
        "b/weight_scale": np.float32(3.5) * np.ones(2, np.float32),
        "c/conv": rng.standard_normal((2, 3, 3)).astype(np.float32),
        "c/table": np.arange(6, dtype=np.int32).reshape(2, 3),
        "c/int16": np.arange(3, dtype=np.int16),
        "num_heads": np.int16(8),
        "pre_norm": np.int8(1),
        "empty": np.zeros((0, 4), np.float32),
        "naïve/ünicode": np.ones(1, np.float32),
    }
    return Ct2Model(
        spec="TestSpec", revision=7, variables=variables, aliases={"z/alias": "a/weight"}
    )


def test_round_trip_keeps_every_variable(tmp_path):
    m = _sample_model()
    path = ct2_format.write_model_bin(m, tmp_path / "model.bin")
    back = ct2_format.read_model_bin(tmp_path)  # a folder works too
    assert (back.spec, back.revision, back.binary_version) == ("TestSpec", 7, 6)
    assert back.aliases == {"z/alias": "a/weight"}
    assert set(back.variables) == set(m.variables)
    for name, arr in m.variables.items():
        got = back.variables[name]
        assert got.dtype == np.asarray(arr).dtype, name
        assert got.shape == np.asarray(arr).shape, name
        np.testing.assert_array_equal(got, arr)
    np.testing.assert_array_equal(back["z/alias"], m.variables["a/weight"])
    assert "z/alias" in back and "nope" not in back
    assert back.names()[-1] == "z/alias"
    # writing what was read gives the same bytes
    again = ct2_format.write_model_bin(back, tmp_path / "again.bin")
    assert again.read_bytes() == path.read_bytes()


def test_header_layout_is_ctranslate2s(tmp_path):
    path = ct2_format.write_model_bin(_sample_model(), tmp_path / "model.bin")
    raw = path.read_bytes()
    assert struct.unpack("<I", raw[:4]) == (6,)
    (n,) = struct.unpack("<H", raw[4:6])
    assert raw[6 : 6 + n] == b"TestSpec\0"
    assert struct.unpack("<I", raw[6 + n : 10 + n]) == (7,)


def test_bfloat16_is_read_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # exact in bfloat16
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    raw = bytearray(struct.pack("<I", 6))
    for s in ("S",):
        raw += struct.pack("<H", len(s) + 1) + s.encode() + b"\0"
    raw += struct.pack("<I", 1) + struct.pack("<I", 1)
    raw += struct.pack("<H", 2) + b"w\0" + struct.pack("<B", 1) + struct.pack("<I", 3)
    raw += struct.pack("<B", 5) + struct.pack("<I", bits.nbytes) + bits.tobytes()
    raw += struct.pack("<I", 0)
    (tmp_path / "model.bin").write_bytes(bytes(raw))
    m = ct2_format.read_model_bin(tmp_path / "model.bin")
    assert m.variables["w"].dtype == np.float32
    np.testing.assert_array_equal(m.variables["w"], values)


def test_truncated_file_is_an_error(tmp_path):
    path = ct2_format.write_model_bin(_sample_model(), tmp_path / "model.bin")
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-30])
    with pytest.raises(Ct2FormatError, match="cut.bin"):
        ct2_format.read_model_bin(tmp_path / "cut.bin")


def test_trailing_bytes_and_bad_version_are_errors(tmp_path):
    raw = ct2_format.write_model_bin(_sample_model(), tmp_path / "model.bin").read_bytes()
    (tmp_path / "extra.bin").write_bytes(raw + b"\0\0")
    with pytest.raises(Ct2FormatError, match="unexpected bytes"):
        ct2_format.read_model_bin(tmp_path / "extra.bin")
    (tmp_path / "v5.bin").write_bytes(struct.pack("<I", 5) + raw[4:])
    with pytest.raises(Ct2FormatError, match="binary version 5"):
        ct2_format.read_model_bin(tmp_path / "v5.bin")
    with pytest.raises(Ct2FormatError, match="no such file"):
        ct2_format.read_model_bin(tmp_path / "missing")


def test_writer_rejects_bad_input(tmp_path):
    m = _sample_model()
    bad_alias = Ct2Model(spec="S", revision=1, variables=m.variables, aliases={"x": "nope"})
    with pytest.raises(ValueError, match="nope"):
        ct2_format.write_model_bin(bad_alias, tmp_path / "a.bin")
    bad_dtype = Ct2Model(spec="S", revision=1, variables={"x": np.zeros(2, np.float64)})
    with pytest.raises(ValueError, match="float64"):
        ct2_format.write_model_bin(bad_dtype, tmp_path / "b.bin")


def test_reads_what_ctranslate2_wrote(tiny_ct2_dir, tiny_model):
    """The converter's own output parses, matches the model it came from, and re-writes to
    the same bytes."""
    model, _ = tiny_model
    m = ct2_format.read_model_bin(tiny_ct2_dir / "model.bin")
    assert (m.spec, m.revision) == ("WhisperSpec", 3)
    # the converter aliases variables with equal values: at least the tied projection
    assert m.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    emb = model.model.decoder.embed_tokens.weight.detach().numpy()
    assert m["decoder/projection/weight"].dtype == np.float16
    np.testing.assert_array_equal(m["decoder/projection/weight"], emb.astype(np.float16))
    conv1 = model.model.encoder.conv1.weight.detach().numpy()
    np.testing.assert_array_equal(m["encoder/conv1/weight"], conv1.astype(np.float16))
    assert int(m["encoder/num_heads"]) == model.config.encoder_attention_heads
    out = ct2_format.write_model_bin(m, tiny_ct2_dir.parent / "rewritten.bin")
    assert out.read_bytes() == (tiny_ct2_dir / "model.bin").read_bytes()


def test_ctranslate2_loads_what_we_wrote(tiny_ct2_dir, tmp_path):
    """A model.bin from our writer, with one weight changed, loads in CTranslate2 itself and the
    change shows in its encoder output."""
    import shutil

    import ctranslate2

    m = ct2_format.read_model_bin(tiny_ct2_dir / "model.bin")
    variables = dict(m.variables)
    variables["encoder/layer_norm/beta"] = np.full_like(variables["encoder/layer_norm/beta"], 0.5)
    out = tmp_path / "edited"
    shutil.copytree(tiny_ct2_dir, out)
    edited = Ct2Model(m.spec, m.revision, variables, m.aliases)
    ct2_format.write_model_bin(edited, out / "model.bin")
    feats = ctranslate2.StorageView.from_array(np.zeros((1, 80, 3000), np.float32))
    enc = {}
    for name, folder in (("orig", tiny_ct2_dir), ("edited", out)):
        w = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
        enc[name] = np.array(w.encode(feats, to_cpu=True))
    # the final layer norm's beta is added to every output: the difference is exactly 0.5 - beta
    beta = m["encoder/layer_norm/beta"].astype(np.float32)
    np.testing.assert_allclose(
        enc["edited"] - enc["orig"], np.broadcast_to(0.5 - beta, enc["orig"].shape), atol=1e-3
    )


@pytest.mark.slow
def test_bundled_model_bin():
    from whisper_sv.models.conversion import bundled_ct2_dir

    m = ct2_format.read_model_bin(bundled_ct2_dir() / "model.bin")
    assert (m.spec, m.revision, m.binary_version) == ("WhisperSpec", 3, 6)
    assert len(m.variables) == 212
    assert m.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert m["decoder/embeddings/weight"].shape == (51865, 512)
    assert m["decoder/embeddings/weight"].dtype == np.float16
