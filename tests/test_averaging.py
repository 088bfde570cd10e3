"""Checkpoint averaging: the result is the elementwise mean and a usable model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from whisper_sv.core.run_folder import RunFolder
from whisper_sv.train.averaging import _lora_deltas, average_checkpoints, select_checkpoints


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, processor, tiny_model_dir) -> Path:
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    out = tmp_path_factory.mktemp("avg-store") / "store"
    source = open_source("synthetic", train=4, validation=2, test=1)
    build_store(
        source, out, BuildOptions(model=str(tiny_model_dir), progress=False), processor=processor
    )
    return out


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, tiny_store, tiny_model_dir) -> Path:
    """A tiny run that evaluated and kept a checkpoint at each of its 3 steps."""
    from whisper_sv.train.run import TrainConfig, train

    run = tmp_path_factory.mktemp("avg-run") / "run"
    cfg = TrainConfig(
        max_steps=3,
        warmup_steps=0,
        lr=1e-3,
        batch_size=2,
        eval_steps=1,
        save_steps=1,
        keep_checkpoints=0,
        eval_limit=2,
        eval_batch_size=2,
        eval_max_new_tokens=3,
        export_ct2=False,
        freeze_encoder=True,
    )
    train(tiny_store, run, model=str(tiny_model_dir), config=cfg, progress=False)
    return run


def test_average_of_two_is_the_elementwise_mean(run_with_checkpoints, tmp_path):
    from whisper_sv.models.references import load_model, resolve

    run = RunFolder(run_with_checkpoints)
    chosen = select_checkpoints(run.path, 2)
    rows = {r.step: r.wer for r in run.reports.read_metrics()}
    # The two lowest WERs (ties: the later step first).
    ranked = sorted(rows, key=lambda s: (rows[s], -s))
    assert [c.step for c, _ in chosen] == ranked[:2]

    out = tmp_path / "avg"
    result = average_checkpoints(run.path, out, top_k=2)
    assert result.steps == tuple(ranked[:2]) and not result.lora
    assert resolve(str(out)).kind == "transformers"  # a valid --model
    model, processor = load_model(str(out))
    assert processor.tokenizer.convert_tokens_to_ids("<|sv|>") == 50273

    a, b = (load_file(str(c.path / "trainable.safetensors")) for c, _ in chosen)
    params = dict(model.named_parameters())
    assert set(a) == set(b) and len(a) > 10
    moved = 0
    for name in a:
        expected = (a[name].double() + b[name].double()) / 2
        torch.testing.assert_close(params[name].double(), expected, atol=1e-7, rtol=0)
        moved += int(not torch.equal(a[name], b[name]))
    assert moved > 0  # the two checkpoints differ, so the test can tell a mean from a copy
    # Parameters that were not trained are those of best/.
    best, _ = load_model(str(run.best_dir))
    for name, p in best.named_parameters():
        if name not in a:
            assert torch.equal(p, params[name]), name
    # The tied output layer follows the averaged embeddings.
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)


def test_average_is_evaluated_like_any_model(run_with_checkpoints, tiny_store, tmp_path, capsys):
    from whisper_sv.cli.main import main

    out = tmp_path / "avg3"
    code = main(
        ["average", str(run_with_checkpoints), "--top-k", "3", "--out", str(out)]
        + ["--features", str(tiny_store)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "averaged 3 checkpoints" in printed and "on 2 validation clips" in printed
    assert (out / "averaging.json").is_file() and (out / "model.safetensors").is_file()
    # An existing non-empty folder is never overwritten.
    assert main(["average", str(run_with_checkpoints), "--top-k", "1", "--out", str(out)]) == 2


def test_too_few_checkpoints_names_the_setting(run_with_checkpoints):
    with pytest.raises(ValueError, match="keep_checkpoints=0"):
        select_checkpoints(run_with_checkpoints, 4)
    with pytest.raises(ValueError, match="top-k must be >= 1"):
        select_checkpoints(run_with_checkpoints, 0)


def test_lora_checkpoint_becomes_the_merged_update():
    a = torch.randn(4, 6)  # (rank, in)
    b = torch.randn(5, 4)  # (out, rank)
    name = "base_model.model.model.decoder.layers.0.self_attn.q_proj"
    deltas = _lora_deltas(
        {f"{name}.lora_A.default.weight": a, f"{name}.lora_B.default.weight": b}, 2.0
    )
    (key,) = deltas
    assert key == "model.decoder.layers.0.self_attn.q_proj.weight"  # the plain model's name
    torch.testing.assert_close(deltas[key], 2.0 * (b.double() @ a.double()))
