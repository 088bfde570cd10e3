"""Sizing the demo to this machine: measure three rates, then pick the largest recipe that fits.

A 2-core CPU with AVX512-BF16 encodes a 30 s window in ~0.4 s; one with AVX2 only (most
laptops: Intel consumer CPUs since 2021, every Apple silicon Mac) needs 2-8 times that, and
bf16 is no help there. The same fixed recipe therefore takes 12 minutes on one machine and
well over an hour on the other. Instead the demo measures, in a few seconds:

- ``encode_s``: one 30 s window through the encoder (every clip costs one, however short);
- ``step_s``: one training step of the decoder on ``batch_size`` packed windows (with the
  frozen start model's forward pass when distilling);
- ``clip_s``: scoring one short clip from its encoder outputs (the loss forward and greedy
  decoding of a typical phrase, in batches of 16 as the evaluators run),

and predicts each stage from the recipe's sizes (:func:`estimate`). :func:`plan` walks a fixed
ladder of recipes, from the one asked for down to a smallest one, and takes the first whose
prediction fits the budget. The ladder cuts what costs time and buys least first: WiSE-FT
mixes and intermediate evaluations, then guard clips, then training windows and steps
together. It never drops a guard or a held-out set: the real-speech rules hold at every size.

The plan assumes nothing is cached, and the rates are kept per machine
(:func:`machine_rates`), so the same machine and budget give the same recipe on a second run,
which then only goes faster (scores and encoder outputs are reused).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Plan",
    "Rates",
    "Sizes",
    "Workload",
    "calibrate",
    "estimate",
    "ladder",
    "machine_rates",
    "parse_budget",
    "plan",
    "rates_key",
]

# Tokens of a typical scored phrase (lexin phrases and cv-dev sentences: 10-30 tokens).
PHRASE_TOKENS = 24
# Label tokens of a packed training window (~7 phrases of ~15 tokens).
WINDOW_TOKENS = 110
# Packed windows hold ~80% of pack_clips short clips (a window ends when the next clip does
# not fit in 30 s): 1,794 clips packed 8 at most gave 443 windows with the translation singles.
PACK_FILL = 0.8
# Feature extraction (espeak-ng synthesis + log-mel) per clip on the AVX512-BF16 machine whose
# encoder rate is REFERENCE_ENCODE_S; slower CPUs scale it by the square root of their encoder
# slow-down (synthesis gains less from wide vectors than matrix products do).
FEATURE_S_PER_CLIP = 0.011
REFERENCE_ENCODE_S = 0.37
# Model loading, CTranslate2 export, the sample transcript and report writing.
FIXED_S = 25.0
# Share of the budget the prediction may fill: the rates are measured once, in seconds.
MARGIN = 0.9


def parse_budget(text: str) -> float:
    """Seconds of ``"15m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or a bare number of minutes;
    ``"0"`` or ``"none"``: no budget (0.0, the recipe runs as given)."""
    t = text.strip().lower()
    if t in ("0", "none", "off"):
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60.0
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
        raise ValueError(
            f"budget {text!r} is not a duration: write e.g. 15m, 900s, 1h30m, or 0 for none"
        )
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass(frozen=True)
class Rates:
    """What this machine takes for the demo's units of work, measured by :func:`calibrate`."""

    encode_s: float  # one 30 s window through the encoder
    step_s: float  # one training step (batch_size packed windows, decoder only)
    clip_s: float  # scoring one short clip from encoder outputs (loss + greedy decoding)
    precision: str  # the precision they were measured in (the training's)
    seconds: float = 0.0  # what measuring them took
    measured_at: str = ""  # when (ISO time, UTC); set when they are read back from the cache
    cached: bool = False  # read from the cache (:func:`machine_rates`), not measured now

    def line(self) -> str:
        how = (
            f"measured {self.measured_at[:16].replace('T', ' ')} UTC, read from the cache; "
            "--recalibrate measures again"
            if self.cached
            else f"measured in {self.seconds:.0f} s"
        )
        return (
            f"encoder {self.encode_s:.2f} s a window, training {self.step_s:.2f} s a step, "
            f"scoring {self.clip_s:.3f} s a clip ({self.precision}, {how})"
        )


@dataclass(frozen=True)
class Sizes:
    """The parts of the recipe a budget may shrink."""

    train_clips: int  # synthetic training sentences
    validation_clips: int  # synthetic validation sentences
    test_clips: int  # synthetic test sentences
    max_steps: int  # training steps
    eval_steps: int  # evaluate every this many steps (and at the start and end)
    guard_clips: int  # clips of each real guard scored at each evaluation
    real_test_clips: int  # clips of each in-domain real held-out set scored (0: all)
    mixes: tuple[float, ...]  # WiSE-FT weights tried after training
    real_repeat: int  # copies of each real training clip

    def line(self) -> str:
        mixes = ", ".join(f"{m:g}" for m in self.mixes) or "none"
        return (
            f"{self.train_clips} synthetic training clips, {self.max_steps} steps, evaluations "
            f"at {_eval_points(self)}, {self.guard_clips} clips a guard, "
            f"{self.validation_clips} validation and {self.test_clips} test clips, "
            f"{self.real_test_clips or 'all'} clips of each real held-out set, "
            f"real training clips x{self.real_repeat}, WiSE-FT mixes: {mixes}"
        )


@dataclass(frozen=True)
class Workload:
    """What the data fixes: the real sets' clip counts and the long-form files."""

    real_train: int = 0  # real clips mixed into training (before repeating)
    guards: tuple[int, ...] = ()  # clips in each real guard (before the guard_clips limit)
    translate_guard: int = 0  # clips of the guard also scored on the translate task (limit too)
    real_tests: tuple[int, ...] = ()  # clips of each in-domain real held-out set
    general_test: int = 0  # clips of the out-of-domain set (scored whole: it is a guard too)
    translate_test: int = 0  # clips of the held-out set also scored on the translate task
    long_form_s: float = 0.0  # seconds of the held-out long-form file
    long_form_guard_s: float = 0.0  # seconds of the long-form guard
    pack_clips: int = 8  # training clips joined per window
    translate_share: float = 0.0  # share of real training clips also trained alone


def _eval_points(s: Sizes) -> str:
    points = sorted({0, *range(s.eval_steps, s.max_steps, s.eval_steps), s.max_steps})
    return "steps " + "/".join(str(p) for p in points)


def _windows_of_audio(seconds: float) -> int:
    return math.ceil(seconds / 30.0) + 1 if seconds > 0 else 0


def estimate(s: Sizes, w: Workload, r: Rates) -> dict[str, float]:
    """Predicted seconds of each stage of the demo with nothing cached."""
    e, c = r.encode_s, r.clip_s
    long_form = _windows_of_audio(w.long_form_s) * (e + 4 * c)
    cap = s.real_test_clips or 10**9
    real_test = sum(min(n, cap) for n in w.real_tests) + w.general_test
    scored = s.test_clips + real_test + min(w.translate_test, cap)
    guard = sum(min(g, s.guard_clips) for g in w.guards)
    evaluation = (
        s.validation_clips + guard + min(w.translate_guard, s.guard_clips)
    ) * c + _windows_of_audio(w.long_form_guard_s) * (e + 4 * c)
    real = w.real_train * s.real_repeat
    windows = (s.train_clips + real) / (w.pack_clips * PACK_FILL) + real * w.translate_share
    clips = s.train_clips + s.validation_clips + s.test_clips + real
    feature_s = FEATURE_S_PER_CLIP * math.sqrt(max(1.0, e / REFERENCE_ENCODE_S))
    n_evals = len(_eval_points(s).split("/")) + len(s.mixes)
    return {
        "features": clips * feature_s,
        "baseline": (s.test_clips + real_test) * e + scored * c + long_form,
        "encoding": (windows + s.validation_clips + guard) * e,
        "training": s.max_steps * r.step_s,
        "evaluations": n_evals * evaluation,
        "after": scored * c + long_form,
        "other": FIXED_S,
    }


def ladder(asked: Sizes) -> list[Sizes]:
    """Recipes from the one asked for down to the smallest, in the order the plan tries them."""
    cheap = dataclasses.replace(asked, eval_steps=asked.max_steps, mixes=asked.mixes[:3])
    rungs = [asked, cheap]
    rungs.append(
        dataclasses.replace(
            cheap, guard_clips=min(asked.guard_clips or 10**9, 64), mixes=asked.mixes[:2]
        )
    )
    for scale in (0.75, 0.5, 0.35, 0.25, 0.18):
        steps = max(40, 10 * round(asked.max_steps * scale / 10))
        rungs.append(
            dataclasses.replace(
                rungs[2],
                train_clips=max(160, 40 * round(asked.train_clips * scale / 40))
                if asked.train_clips
                else 0,
                max_steps=steps,
                eval_steps=steps,
                guard_clips=min(rungs[2].guard_clips, 48),
                validation_clips=min(asked.validation_clips, 24),
                real_test_clips=64 if scale >= 0.35 else 48,
                real_repeat=asked.real_repeat if scale >= 0.5 else 1,
                mixes=asked.mixes[:2] if scale >= 0.35 else asked.mixes[:1],
            )
        )
    smallest = dataclasses.replace(
        rungs[-1],
        guard_clips=min(rungs[-1].guard_clips, 32),
        validation_clips=min(asked.validation_clips, 16),
        test_clips=min(asked.test_clips, 32),
        real_test_clips=32,
    )
    return [*rungs, smallest]


@dataclass(frozen=True)
class Plan:
    sizes: Sizes  # the recipe chosen
    seconds: dict[str, float]  # its predicted stage times
    budget_s: float  # the budget (0: none)
    rung: int  # its place on the ladder (0: the recipe asked for)
    fits: bool  # whether the prediction is within the budget
    rates: Rates  # what the prediction was made from

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        head = (
            "no budget: the recipe as given"
            if not self.budget_s
            else f"budget {self.budget_s / 60:.0f} min: recipe {self.rung} of the ladder"
        )
        warn = "" if self.fits else " (the smallest recipe; it does not fit the budget here)"
        return f"{head}{warn}, predicted {self.total / 60:.1f} min: {self.sizes.line()}"


def plan(asked: Sizes, work: Workload, rates: Rates, budget_s: float) -> Plan:
    """The first recipe of :func:`ladder` predicted to fit ``MARGIN`` of the budget (the
    smallest when none does; the one asked for when there is no budget)."""
    rungs = ladder(asked) if budget_s > 0 else [asked]
    for i, sizes in enumerate(rungs):
        seconds = estimate(sizes, work, rates)
        if not budget_s or sum(seconds.values()) <= MARGIN * budget_s:
            return Plan(sizes, seconds, budget_s, i, True, rates)
    smallest = rungs[-1]
    return Plan(smallest, estimate(smallest, work, rates), budget_s, len(rungs) - 1, False, rates)


def rates_key(**recipe: Any) -> dict[str, Any]:
    """What the rates depend on: this CPU (model name, vector flags, cores), the instruction
    sets the environment allows (``bench/cpu-class.sh``), the torch build and thread count,
    and ``recipe`` (precision, batch size, distillation, model)."""
    import os

    import torch

    from whisper_sv.core.runtime import cpu_info

    name, flags = cpu_info()
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")))
    cpu = {"cores": os.cpu_count(), "model": name, "flags": vector}
    isa = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
    return {
        "cpu": cpu,
        "isa": {k: os.environ.get(k, "") for k in isa},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": recipe,
        "format": 1,
    }


def machine_rates(
    measure: Callable[[], Rates],
    key: dict[str, Any],
    cache: Path,
    *,
    recalibrate: bool = False,
) -> Rates:
    """This machine's rates from ``cache`` (a folder), else ``measure()`` kept there.

    A second demo reuses the first one's rates: it skips the calibration and, above all,
    plans the same recipe, so the first run's cached scores and encoder outputs match it (a
    re-measured rate a few percent off can pick another rung and other clip counts).
    """
    import datetime
    import hashlib
    import json

    from whisper_sv.core.fsutil import atomic_write_text

    text = json.dumps(key, sort_keys=True)
    path = cache / f"rates-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if path.is_file() and not recalibrate:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return dataclasses.replace(Rates(**data["rates"]), cached=True)
        except (ValueError, KeyError, TypeError):
            pass  # unreadable (an older format): measure again
    rates = measure()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    data = {"key": key, "rates": dataclasses.asdict(dataclasses.replace(rates, measured_at=now))}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return rates


def calibrate(
    model: Any, *, precision: str, batch_size: int, distill: bool, repeats: int = 1
) -> Rates:
    """Measure :class:`Rates` on ``model`` (a WhisperForConditionalGeneration on the CPU)
    in ``precision``; its weights are left as they were (no optimizer step is taken)."""
    import torch

    t0 = time.perf_counter()
    bf16 = precision == "bf16"
    d_model = model.config.d_model
    frames = model.config.max_source_positions
    gen = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        encode_s = _time(lambda: _encode(model, gen), repeats) / 2
        hidden = torch.randn(batch_size, frames, d_model, generator=gen)
        step_s = _time(lambda: _train_step(model, hidden, gen, distill), repeats)
        clip_s = _time(lambda: _score(model, gen), repeats) / 16
    model.train(was_training)
    return Rates(encode_s, step_s, clip_s, precision, time.perf_counter() - t0)


def _time(work: Any, repeats: int) -> float:
    """Least seconds of ``repeats`` runs after one warm-up (oneDNN builds kernels on first
    use; the least is the machine's rate, the rest is noise from other processes)."""
    work()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t)
    return best


def _encode(model: Any, gen: Any) -> None:
    import torch

    with torch.no_grad():
        model.get_encoder()(torch.randn(2, model.config.num_mel_bins, 3000, generator=gen))


def _labels(model: Any, rows: int, tokens: int, gen: Any) -> Any:
    import torch

    return torch.randint(0, model.config.eos_token_id, (rows, tokens), generator=gen)


def _train_step(model: Any, hidden: Any, gen: Any, distill: bool) -> None:
    """A decoder forward and backward on packed-window labels (+ the teacher's forward)."""
    import torch

    labels = _labels(model, hidden.shape[0], WINDOW_TOKENS, gen)
    if distill:
        with torch.no_grad():
            model(encoder_outputs=(hidden,), labels=labels, use_cache=False)
    out = model(encoder_outputs=(hidden,), labels=labels, use_cache=False)
    out.loss.backward()
    model.zero_grad(set_to_none=True)


def _score(model: Any, gen: Any) -> None:
    """16 clips: the loss forward and PHRASE_TOKENS greedy steps with a KV cache (the
    end-of-text id is never produced, so every clip runs the full length)."""
    import torch

    from whisper_sv.train.scoring import greedy_decode

    hidden = torch.randn(16, model.config.max_source_positions, model.config.d_model, generator=gen)
    labels = _labels(model, 16, PHRASE_TOKENS, gen)
    with torch.no_grad():
        model(encoder_outputs=(hidden,), labels=labels, use_cache=False)
    greedy_decode(
        model,
        hidden,
        [model.config.decoder_start_token_id],
        max_new_tokens=PHRASE_TOKENS,
        eot_id=-1,
    )
