"""The anti-forgetting terms of the training objective (train_objective.py) and training only
the top decoder layers, on the tiny random Whisper and a tiny real feature store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_store
from test_train import config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory, processor) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", processor)


def _batch(model, processor, n: int = 2):
    """Encoder outputs and labels of ``n`` windows, as the cached-encoder path feeds them."""
    g = torch.Generator().manual_seed(0)
    frames = model.config.max_source_positions
    hidden = torch.randn(n, frames, model.config.d_model, generator=g)
    ids = processor.tokenizer("en katt sitter på mattan").input_ids
    labels = torch.tensor([ids[1:]] * n)
    labels[1, -2:] = -100  # padding takes no loss
    return {"encoder_outputs": (hidden,), "labels": labels}


def _run(net, x):
    return net(use_cache=False, **x)


def test_distillation_kl_is_zero_for_the_teacher_itself_and_skips_ignored_positions():
    from whisper_sv.train.objective import distillation_kl

    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    assert distillation_kl(teacher, teacher, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[0, 3:] += 5.0  # only ignored positions differ
    assert distillation_kl(student, teacher, labels, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    student[1, 0] += torch.randn(11, generator=g) * 3
    assert distillation_kl(student, teacher, labels, 1.0).item() > 1e-3


def test_l2sp_adds_half_the_squared_distance_to_the_start_weights(tiny_model_dir, processor):
    from whisper_sv.train.objective import Objective
    from whisper_sv.train.setup import load_model

    cfg = config(l2sp=0.5)
    model = load_model(tiny_model_dir, cfg)
    objective = Objective(cfg, model)
    batch = _batch(model, processor)
    loss, ce = objective(model, model, batch, _run)
    assert loss.item() == pytest.approx(ce.item())  # at the start weights: no penalty
    with torch.no_grad():
        model.get_decoder().layer_norm.bias.add_(0.1)
    loss, ce = objective(model, model, batch, _run)
    d = model.config.d_model
    assert loss.item() - ce.item() == pytest.approx(0.5 * 0.5 * d * 0.01, rel=1e-4)


def test_distill_at_the_start_is_the_scaled_cross_entropy(tiny_model_dir, processor):
    from whisper_sv.train.objective import Objective
    from whisper_sv.train.setup import load_model

    cfg = config(distill=0.4, distill_temperature=2.0)
    model = load_model(tiny_model_dir, cfg)
    objective = Objective(cfg, model)
    batch = _batch(model, processor)
    loss, ce = objective(model, model, batch, _run)
    assert loss.item() == pytest.approx(0.6 * ce.item(), rel=1e-5)  # teacher == student
    with torch.no_grad():
        bias = model.get_decoder().layers[-1].fc2.bias
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(2)))
    loss, ce = objective(model, model, batch, _run)
    assert loss.item() > 0.6 * ce.item() + 1e-3  # now the KL counts
    # The teacher is a frozen copy: changing the student did not change it.
    assert not any(p.requires_grad for p in objective.teacher.parameters())


def test_top_layers_only_trains_the_top_decoder_layers_and_layer_norms(tiny_model_dir):
    from whisper_sv.train.setup import load_model, trainable_params

    model = load_model(tiny_model_dir, config(decoder_top_layers=1))
    names = list(trainable_params(model))
    top = len(model.get_decoder().layers) - 1
    assert names and all(f"decoder.layers.{top}." in n or "layer_norm" in n for n in names)
    assert any(f"decoder.layers.{top}.fc1" in n for n in names)
    assert not any("embed" in n or "encoder." in n for n in names)
    with pytest.raises(ValueError, match="only 2 layers|only"):
        load_model(tiny_model_dir, config(decoder_top_layers=99))


def test_config_names_the_fix_for_bad_anti_forgetting_values():
    from whisper_sv.train.run import TrainConfig

    with pytest.raises(ValueError, match="distill must be in"):
        TrainConfig(distill=1.0)
    with pytest.raises(ValueError, match="l2sp must be >= 0"):
        TrainConfig(l2sp=-1)
    with pytest.raises(ValueError, match="set one of them to 0"):
        TrainConfig(decoder_top_layers=1, lora_rank=4)


def _distance(run: Path, start: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(run / "best" / "model.safetensors"), load_file(start / "model.safetensors")
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in b if k in a)


def test_l2sp_and_distill_keep_a_run_closer_to_the_start(tmp_path, store, tiny_model_dir):
    from whisper_sv.train.run import train

    common = dict(max_steps=4, eval_steps=4, save_steps=4, validate=False, lr=3e-3)
    runs = {}
    for name, extra in {
        "plain": {},
        "l2sp": {"l2sp": 50.0},
        "distill": {"distill": 0.9},
    }.items():
        result = train(
            store,
            tmp_path / name,
            model=str(tiny_model_dir),
            config=config(**common, **extra),
            progress=False,
        )
        assert result.step == 4 and all(loss > 0 for loss in result.losses)
        runs[name] = _distance(tmp_path / name, tiny_model_dir)
    assert runs["plain"] > 0
    assert runs["l2sp"] < runs["plain"]
    assert runs["distill"] < runs["plain"]
