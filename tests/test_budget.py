"""The demo's budget: durations, the cost model, the ladder of recipes, the calibration."""

import dataclasses

import pytest

from whisper_sv.workflows.budget import (
    Rates,
    Sizes,
    Workload,
    calibrate,
    estimate,
    ladder,
    machine_rates,
    parse_budget,
    plan,
    rates_key,
)

ASKED = Sizes(1440, 32, 48, 250, 125, 96, 0, (0.2, 0.3, 0.4, 0.5, 0.6, 0.7), 2)
# The demo's real data: lexin-phrases, sv-words and cv-dev cut as the demo cuts them.
WORK = Workload(
    real_train=177,
    guards=(119, 54, 50),
    translate_guard=119,
    real_tests=(128, 54),
    general_test=50,
    translate_test=128,
    long_form_s=120,
    long_form_guard_s=60,
    pack_clips=8,
    translate_share=0.5,
)
# Rates measured on 2 cores: AVX512-BF16 in bf16, and the same CPU held to AVX2 in fp32.
BF16 = Rates(0.46, 1.60, 0.236, "bf16")
AVX2 = Rates(0.60, 2.52, 0.290, "fp32")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("900s", 900), ("1h30m", 5400), ("2", 120), ("0", 0), ("none", 0)],
)
def test_budget_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["fast", "15 minutes", "m15", "-3m", "1x"])
def test_a_bad_budget_names_the_forms_it_takes(text):
    with pytest.raises(ValueError, match="e.g. 15m, 900s, 1h30m"):
        parse_budget(text)


def test_the_full_recipe_predicts_the_measured_demo_within_a_fifth():
    # The last full demo on the AVX512-BF16 machine took 1,594 s (docs/benchmarks.md).
    total = sum(estimate(ASKED, WORK, BF16).values())
    assert 0.8 * 1594 <= total <= 1.2 * 1594


def test_no_budget_runs_the_recipe_asked_for():
    p = plan(ASKED, WORK, AVX2, 0)
    assert p.sizes == ASKED and p.rung == 0 and p.fits and "no budget" in p.line()


def test_a_fast_machine_keeps_the_recipe_and_a_slow_one_gets_a_smaller_one():
    fast = Rates(0.05, 0.2, 0.02, "bf16")
    assert plan(ASKED, WORK, fast, 900).sizes == ASKED
    p = plan(ASKED, WORK, AVX2, 900)
    assert p.fits and p.rung > 0 and sum(p.seconds.values()) <= 0.9 * 900
    assert p.sizes.max_steps < ASKED.max_steps and p.sizes.train_clips < ASKED.train_clips
    # Slower still: a smaller recipe again (never a larger one).
    slower = plan(ASKED, WORK, dataclasses.replace(AVX2, encode_s=1.0, step_s=4.0), 900)
    assert slower.rung >= p.rung


def test_every_rung_keeps_guards_and_the_held_out_sets_and_shrinks_monotonically():
    rungs = ladder(ASKED)
    totals = [sum(estimate(s, WORK, AVX2).values()) for s in rungs]
    assert totals == sorted(totals, reverse=True)
    for s in rungs:
        assert s.guard_clips >= 32 and s.test_clips >= 32 and s.max_steps >= 40 and s.mixes
        assert s.real_test_clips == 0 or s.real_test_clips >= 32
        assert s.eval_steps <= s.max_steps


def test_a_budget_nothing_fits_runs_the_smallest_recipe_and_says_so():
    p = plan(ASKED, WORK, Rates(5.0, 20.0, 2.0, "fp32"), 300)
    assert p.sizes == ladder(ASKED)[-1] and not p.fits
    assert "does not fit the budget" in p.line()


def test_calibration_measures_rates_and_leaves_the_weights_alone(tiny_model):
    from whisper_sv.workflows.set_scores import weights_digest

    model, _ = tiny_model
    before = weights_digest(model)
    rates = calibrate(model, precision="fp32", batch_size=2, distill=True, repeats=1)
    assert rates.encode_s > 0 and rates.step_s > 0 and rates.clip_s > 0
    assert weights_digest(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert "s a window" in rates.line()


def test_a_second_run_reads_this_machines_rates_and_plans_the_same_recipe(tmp_path, monkeypatch):
    measured = []

    def measure():
        measured.append(1)
        return dataclasses.replace(BF16, encode_s=BF16.encode_s * (1 + 0.1 * len(measured)))

    key = rates_key(precision="bf16", batch_size=8, distill=True, model="bundled:base")
    first = machine_rates(measure, key, tmp_path)
    second = machine_rates(measure, key, tmp_path)
    assert len(measured) == 1 and not first.cached and second.cached
    assert second.encode_s == first.encode_s and second.measured_at.startswith("20")
    assert plan(ASKED, WORK, second, 900).sizes == plan(ASKED, WORK, first, 900).sizes
    assert "read from the cache; --recalibrate measures again" in second.line()
    # Asked to, or on another CPU class, it measures again.
    again = machine_rates(measure, key, tmp_path, recalibrate=True)
    assert len(measured) == 2 and not again.cached and again.encode_s > first.encode_s
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    machine_rates(
        measure, rates_key(precision="fp32", batch_size=8, distill=True, model="m"), tmp_path
    )
    assert len(measured) == 3
    # A cache file it cannot read is measured over, not an error.
    for f in tmp_path.glob("rates-*.json"):
        f.write_text("{not json")
    assert not machine_rates(measure, key, tmp_path).cached and len(measured) == 4
