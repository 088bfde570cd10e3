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


# Each bad choice of training options, and the words of the fix its error names.
BAD_CONFIGS = [
    ({"distill": 1.0}, "distill must be in"),
    ({"l2sp": -1}, "l2sp must be >= 0"),
    ({"decoder_top_layers": 1, "lora_rank": 4}, "set one of them to 0"),
    ({"train_only": ("encoder_attn(",)}, "not a regular expression"),
    ({"train_only": ("fc1",), "lora_rank": 4}, "use lora_targets"),
    ({"anchor_sources": ("synthetic",), "freeze_encoder": True}, "set distill > 0"),
    (
        {"anchor_sources": ("synthetic",), "distill": 0.5, "freeze_encoder": False},
        "cache_encoder: true",
    ),
    ({"encoder_top_layers": 2}, "set freeze_encoder: true"),
    ({"freeze_encoder": True, "freeze_decoder": True}, "leaves nothing to train"),
    (
        {"freeze_encoder": True, "encoder_top_layers": 1, "decoder_top_layers": 1},
        "use one of them",
    ),
]


@pytest.mark.parametrize(("changes", "fix"), BAD_CONFIGS)
def test_config_names_the_fix(changes, fix):
    from whisper_sv.train.run import TrainConfig

    with pytest.raises(ValueError, match=fix):
        TrainConfig(**changes)


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


def test_anchor_rows_take_the_teachers_distribution_alone(tiny_model_dir, processor):
    """Anchor rows (anchor_sources) add only their KL: at the start weights (student ==
    teacher) an all-anchor batch has zero loss whatever its labels, and a mixed batch's loss
    is the other rows' scaled cross-entropy, averaged over every labelled token."""
    import torch.nn.functional as F

    from whisper_sv.train.objective import Objective
    from whisper_sv.train.setup import load_model

    cfg = config(distill=0.4, distill_temperature=2.0)
    model = load_model(tiny_model_dir, cfg)
    objective = Objective(cfg, model)
    batch = _batch(model, processor)
    every = torch.tensor([True, True])
    loss, ce = objective(model, model, batch, _run, every)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and ce.item() > 0
    first = torch.tensor([False, True])
    loss, _ = objective(model, model, batch, _run, first)
    logits = model(use_cache=False, **batch).logits
    labels = batch["labels"]
    row0 = F.cross_entropy(logits[0].float(), labels[0], reduction="sum")
    tokens = int((labels != -100).sum())
    assert loss.item() == pytest.approx(0.6 * row0.item() / tokens, rel=1e-4)
    with torch.no_grad():  # a changed student: the anchor row's KL now counts
        bias = model.get_decoder().layers[-1].fc2.bias
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(2)))
    loss_moved, _ = objective(model, model, batch, _run, every)
    assert loss_moved.item() > 1e-3


def test_train_only_freezes_every_parameter_its_patterns_miss(tiny_model_dir):
    from whisper_sv.train.setup import load_model, trainable_params

    model = load_model(tiny_model_dir, config(train_only=("encoder_attn",)))
    names = list(trainable_params(model))
    # The cross-attention and its layer norm, in every decoder layer; nothing else.
    assert names and all("encoder_attn" in n and ".decoder." in n for n in names)
    assert any(n.endswith("encoder_attn.k_proj.weight") for n in names)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        load_model(tiny_model_dir, config(train_only=("no_such_module",)))


def test_the_encoder_started_and_finished_at_a_layer_is_the_whole_encoder(tiny_model_dir):
    """What is cached for encoder_top_layers (the hidden states entering the first trained
    layer) and what a step runs from there give the encoder's own output."""
    from whisper_sv.train.encoder_cache import finish_encoder, start_encoder
    from whisper_sv.train.setup import load_model

    model = load_model(tiny_model_dir, config()).eval()
    encoder = model.get_encoder()
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, model.config.num_mel_bins, 3000, generator=g)
    with torch.no_grad():
        whole = encoder(feats).last_hidden_state
        for cut in range(len(encoder.layers) + 1):
            part = start_encoder(encoder, feats, cut)
            got = finish_encoder(encoder, part, cut)
            torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
        assert torch.equal(start_encoder(encoder, feats), whole)


def test_encoder_top_layers_train_the_top_of_the_encoder_and_freeze_decoder_keeps_it(
    tiny_model_dir,
):
    from whisper_sv.train.setup import load_model, trainable_params

    model = load_model(tiny_model_dir, config(encoder_top_layers=1))
    top = len(model.get_encoder().layers) - 1
    names = list(trainable_params(model))
    encoder_names = [n for n in names if ".encoder." in n]
    assert any(f"encoder.layers.{top}.fc1" in n for n in encoder_names)
    assert all(f"encoder.layers.{top}." in n or "encoder.layer_norm" in n for n in encoder_names)
    assert any(".decoder." in n for n in names)
    only = load_model(tiny_model_dir, config(encoder_top_layers=1, freeze_decoder=True))
    assert all(".encoder." in n for n in trainable_params(only))
    lora = load_model(
        tiny_model_dir,
        config(
            encoder_top_layers=1, freeze_decoder=True, lora_rank=2, lora_targets=("q_proj", "fc1")
        ),
    )
    adapted = {n.split(".lora_")[0] for n in trainable_params(lora) if "lora_" in n}
    assert {a.split(f"encoder.layers.{top}.")[-1] for a in adapted} == {"self_attn.q_proj", "fc1"}
    with pytest.raises(ValueError, match="has only"):
        load_model(tiny_model_dir, config(encoder_top_layers=99))


def test_a_run_with_a_trained_encoder_top_moves_only_that_layer_of_the_encoder(
    tmp_path, store, tiny_model_dir
):
    """Cached lower-layer outputs, the top layer run at each step and evaluation, and the
    teacher's own top layer for distillation: the run trains, the lower encoder stays."""
    from safetensors.torch import load_file

    from whisper_sv.train.run import train

    result = train(
        store,
        tmp_path / "run",
        model=str(tiny_model_dir),
        config=config(encoder_top_layers=1, distill=0.5, max_steps=3, eval_steps=3, lr=3e-3),
        progress=False,
    )
    assert result.step == 3 and result.best_wer is not None
    start = load_file(tiny_model_dir / "model.safetensors")
    best = load_file(tmp_path / "run" / "best" / "model.safetensors")
    if result.best_step == 0:  # best/ is the start model: compare the last checkpoint
        ckpt = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
        best = {**start, **load_file(ckpt / "trainable.safetensors")}
    moved = {k for k in start if k in best and not torch.equal(start[k], best[k])}
    top = max(int(k.split(".")[3]) for k in start if k.startswith("model.encoder.layers."))
    assert any(k.startswith(f"model.encoder.layers.{top}.") for k in moved)
    assert not any(k.startswith("model.encoder.layers.") and f".{top}." not in k for k in moved)
    assert not any(k.startswith("model.encoder.conv") for k in moved)
