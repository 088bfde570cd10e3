"""Data-centric experiments, each one function and one command (``whisper-sv experiment``).

| name | question | data |
|---|---|---|
| ``voices`` | does training on many voices beat one voice, at equal hours? | synthetic, 1 vs 8 espeak-ng voices, same sentences; tested on unseen voices |
| ``noise`` | does noise augmentation help on noisy speech, and what does it cost on clean? | synthetic, train noise at several SNRs; clean and noisy test sets |
| ``speaker`` | how far do a few recordings of one real speaker move the model? | ../shared/data/sv-words: fine-tune on some words, test on held-out words |

Everything goes through the same pipelines as any user run: :func:`features.build_store`,
:func:`train.train`, and the training evaluator (:func:`train.evaluate_dataset`, greedy). An
experiment folder holds its stores, runs and ``results.md`` / ``results.json`` /
``results.png``; a re-run reuses finished stores, runs and evaluations, so it is cheap to
extend or to resume after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_sv.core.config import need
from whisper_sv.models.references import DEFAULT_MODEL
from whisper_sv.train.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = [
    "EXPERIMENTS",
    "ExperimentOptions",
    "ExperimentResult",
    "ResultRow",
    "noise",
    "run_experiment",
    "speaker",
    "sv_words_dir",
    "voices",
]

EXPERIMENTS = ("voices", "noise", "speaker")
PRETRAINED = "pretrained"  # name of the row of the model before fine-tuning


def sv_words_dir() -> Path:
    """``../shared/data/sv-words`` beside the repository (or ``$WHISPER_SV_WORDS``).

    Looked up next to the source checkout first, then next to the working directory.
    """
    env = os.environ.get("WHISPER_SV_WORDS")
    if env:
        return Path(env)
    rel = Path("shared") / "data" / "sv-words"
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root.parent / rel).is_dir():
            return root.parent / rel
    return Path(__file__).resolve().parents[3].parent / rel


@dataclass(frozen=True)
class ExperimentOptions:
    """The budget and recipe shared by the experiments (``--budget key=value``)."""

    model: str = DEFAULT_MODEL  # model every run starts from (and the pretrained row)
    train_clips: int = 100  # synthetic training clips (equal in every condition)
    validation_clips: int = 20  # synthetic validation clips (checkpoint choice)
    test_clips: int = 30  # synthetic test clips (unseen voices and sentences)
    steps: int = 60  # optimizer steps per run
    batch_size: int = 4  # clips per step
    lr: float = 1e-4  # peak learning rate
    warmup_steps: int = 6  # linear warm-up steps
    evals: int = 3  # validation evaluations per run (the best one is kept)
    seed: int = 0  # sentences, voices, noise draws and training seed
    many_voices: tuple[str, ...] = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt")
    one_voice: str = "m1"  # the single voice of the voices experiment
    snrs: tuple[float, ...] = (20.0, 10.0, 5.0)  # training noise levels, dB (noise)
    test_snr: float = 10.0  # noise level of the noisy test set, dB (noise)
    speaker_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)  # words: train/val/test
    workers: int = 1  # feature worker processes

    def __post_init__(self) -> None:
        for name in ("train_clips", "validation_clips", "test_clips", "steps", "batch_size"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1 (got {getattr(self, name)})")
        need(self.evals >= 1, f"evals must be >= 1 (got {self.evals})")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(
            0 <= self.warmup_steps < self.steps,
            f"warmup_steps must be in [0, steps) (got {self.warmup_steps}, steps {self.steps})",
        )
        need(len(self.many_voices) >= 2, "many_voices needs at least 2 voices")
        need(
            len(set(self.many_voices)) == len(self.many_voices),
            f"many_voices lists a voice twice: {self.many_voices}",
        )
        need(
            self.one_voice in self.many_voices,
            f"one_voice {self.one_voice!r} should be one of many_voices {list(self.many_voices)}",
        )
        need(len(self.snrs) >= 1, "snrs needs at least one noise level (dB)")
        need(
            len(self.speaker_fractions) == 3
            and all(f > 0 for f in self.speaker_fractions)
            and abs(sum(self.speaker_fractions) - 1) < 1e-6,
            "speaker_fractions must be three shares > 0 adding up to 1 (train, validation, test)",
        )
        need(self.workers >= 1, "workers must be >= 1")

    def train_config(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The training recipe: frozen encoder with cached outputs (the CPU fast path)."""
        from whisper_sv.core.config import from_mapping

        every = max(1, math.ceil(self.steps / self.evals))
        data: dict[str, Any] = {
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size,
            "max_steps": self.steps,
            "eval_steps": every,
            "save_steps": every,
            "freeze_encoder": True,
            "cache_encoder": True,
            "keep_checkpoints": 1,
            "export_ct2": False,
            "seed": self.seed,
        }
        data.update(overrides or {})
        return from_mapping(TrainConfig, data)


@dataclass(frozen=True)
class ResultRow:
    """One model on one test set."""

    condition: str  # what the model was trained on ("pretrained", "8 voices", "snr 10 dB"...)
    test: str  # the test set ("unseen voices", "clean", "noisy 10 dB", "held-out words")
    wer: float  # percent, normalised text
    cer: float  # percent, normalised text
    n: int  # test clips
    train_hours: float  # audio hours the model was fine-tuned on (0: pretrained)
    train_seconds: float  # wall time of the training steps (0: pretrained)
    eval_seconds: float  # wall time of the evaluation
    best_step: int | None = None  # the checkpoint evaluated (best validation WER)
    examples: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (reference, output)


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment measured; also in ``out/results.md`` and ``out/results.json``."""

    name: str  # "voices" | "noise" | "speaker"
    question: str  # what it asks
    out: Path  # the experiment folder
    rows: tuple[ResultRow, ...]
    report: Path  # results.md
    plot: Path | None  # results.png
    options: ExperimentOptions
    train: TrainConfig  # the training recipe used

    def table(self) -> str:
        return results_markdown(self.rows)


# --------------------------------------------------------------------------- building blocks


class _Lab:
    """Stores, runs and cached evaluations under one experiment folder."""

    def __init__(
        self, out: Path, options: ExperimentOptions, train_cfg: TrainConfig, progress: bool
    ) -> None:

        self.out = out
        self.options = options
        self.progress = progress
        out.mkdir(parents=True, exist_ok=True)
        self.train_cfg = train_cfg

    def cache_dir(self, store: Path) -> str:
        """Encoder outputs kept between runs and re-runs, one folder per store.

        Training keys its encoder cache by the store's config and shard list (names and row
        counts), which two stores of the same shape share (1 vs 8 voices, clean vs noisy): one folder
        each keeps their encoder outputs apart.
        """
        if self.train_cfg.cache_dir:
            return str(Path(self.train_cfg.cache_dir) / store.name)
        return str(self.out / "cache" / store.name)

    def store(self, name: str, source: Any, **build: Any) -> Path:
        from whisper_sv.data.features import BuildOptions, build_store

        path = self.out / "stores" / name
        opts = BuildOptions(
            model=self.options.model,
            workers=self.options.workers,
            progress=self.progress,
            seed=self.options.seed,
            **build,
        )
        summary = build_store(source, path, opts)
        log.info("store %s:\n%s", name, summary.table())
        return path

    def train(self, name: str, store: Path) -> tuple[Path, Any]:
        from whisper_sv.core.config import from_mapping, to_dict
        from whisper_sv.train.run import train

        run = self.out / "runs" / name
        cfg = from_mapping(
            TrainConfig, {**to_dict(self.train_cfg), "cache_dir": self.cache_dir(store)}
        )
        result = train(store, run, model=self.options.model, config=cfg, progress=self.progress)
        return run, result

    def evaluate(self, model: str, store: Path, split: str, key: str) -> dict[str, Any]:
        """WER/CER of ``model`` on ``store``'s ``split``; cached in ``evals/<key>.json``."""
        from whisper_sv.train.averaging import evaluate_model

        path = self.out / "evals" / f"{key}.json"
        stamp = _stamp(model, store)
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("stamp") == stamp:
                return data
        res = evaluate_model(
            model,
            store,
            split=split,
            batch_size=self.train_cfg.eval_batch_size,
            max_new_tokens=self.train_cfg.eval_max_new_tokens,
        )
        data = {
            "stamp": stamp,
            "wer": res.wer,
            "cer": res.cer,
            "n": res.n,
            "seconds": res.seconds,
            "examples": list(zip(res.references, res.hypotheses, strict=True)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        return data


def _stamp(model: str, store: Path) -> str:
    """Identity of (model weights, store): a cached evaluation is reused only if both match."""
    parts = [model]
    p = Path(model)
    best = p / "best" if (p / "best").is_dir() else p
    weights = best / "model.safetensors"
    if weights.is_file():
        # The weights' content, not their file date: a re-run that writes the same best/
        # again must not void the evaluations made of it (~0.3 s for Whisper base).
        with weights.open("rb") as f:
            parts.append(hashlib.file_digest(f, "sha256").hexdigest()[:16])
    from whisper_sv.data.store import FeatureStore, store_id

    # The store's content (config + shards), not manifest.json: a re-run rewrites its dates.
    parts.append(store_id(FeatureStore(store)))
    return "|".join(parts)


def _hours(store: Path, split: str = "train") -> float:
    from whisper_sv.data.store import FeatureStore

    return float(FeatureStore(store).manifest["splits"].get(split, {}).get("hours", 0.0))


def _row(
    condition: str,
    test: str,
    ev: Mapping[str, Any],
    *,
    hours: float = 0.0,
    result: Any = None,
) -> ResultRow:
    return ResultRow(
        condition=condition,
        test=test,
        wer=float(ev["wer"]),
        cer=float(ev["cer"]),
        n=int(ev["n"]),
        train_hours=hours,
        train_seconds=float(_train_seconds(result)),
        eval_seconds=float(ev["seconds"]),
        best_step=getattr(result, "best_step", None),
        examples=tuple(tuple(e) for e in ev.get("examples", [])[:8]),
    )


def _train_seconds(result: Any) -> float:
    """Training time of a run, also when a re-run found it finished (then from its log)."""
    if result is None:
        return 0.0
    path = Path(result.run) / ".experiment-seconds.json"
    if result.train_seconds > 1.0 or not path.is_file():
        if result.train_seconds > 1.0:
            path.write_text(json.dumps({"seconds": result.train_seconds}), encoding="utf-8")
        return result.train_seconds
    return float(json.loads(path.read_text(encoding="utf-8"))["seconds"])


def results_markdown(rows: Sequence[ResultRow]) -> str:
    head = ("trained on", "test set", "WER %", "CER %", "clips", "train h", "train s", "eval s")
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        lines.append(
            f"| {r.condition} | {r.test} | {r.wer:.1f} | {r.cer:.1f} | {r.n} | "
            f"{r.train_hours:.3f} | {r.train_seconds:.0f} | {r.eval_seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _finish(
    name: str,
    question: str,
    lab: _Lab,
    rows: list[ResultRow],
    command: str,
) -> ExperimentResult:
    from whisper_sv.core.config import to_dict
    from whisper_sv.core.run_folder import write_text_atomic

    out = lab.out
    plot = _plot(rows, out / "results.png", title=question)
    md = [
        f"# Experiment: {name}",
        "",
        question,
        "",
        f"Reproduce: `{command}`",
        "",
        results_markdown(rows).rstrip(),
        "",
        f"Recipe: {lab.options.steps} steps, batch {lab.options.batch_size}, lr "
        f"{lab.train_cfg.lr:g}, frozen encoder (outputs cached), best of {lab.options.evals} "
        f"validation evaluations; model {lab.options.model}.",
        "",
        "Examples (reference -> output):",
        "",
    ]
    for r in rows:
        for ref, hyp in r.examples[:3]:
            md.append(f"- {r.condition} / {r.test}: `{ref}` -> `{hyp}`")
    md += ["", "![results](results.png)" if plot else "", ""]
    report = out / "results.md"
    write_text_atomic(report, "\n".join(md))
    data = {
        "name": name,
        "question": question,
        "options": to_dict(lab.options),
        "train": to_dict(lab.train_cfg),
        "rows": [
            {k: v for k, v in to_dict(r).items() if k != "examples"}
            | {"examples": [list(e) for e in r.examples]}
            for r in rows
        ],
    }
    write_text_atomic(out / "results.json", json.dumps(data, ensure_ascii=False, indent=1))
    return ExperimentResult(
        name=name,
        question=question,
        out=out,
        rows=tuple(rows),
        report=report,
        plot=plot,
        options=lab.options,
        train=lab.train_cfg,
    )


def _plot(rows: Sequence[ResultRow], path: Path, title: str) -> Path | None:
    """Grouped bars: WER per condition, one bar per test set."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conditions = list(dict.fromkeys(r.condition for r in rows))
    tests = list(dict.fromkeys(r.test for r in rows))
    width = 0.8 / len(tests)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(conditions)), 4))
    x = np.arange(len(conditions))
    for i, test in enumerate(tests):
        vals = [
            next((r.wer for r in rows if r.condition == c and r.test == test), np.nan)
            for c in conditions
        ]
        bars = ax.bar(x + (i - (len(tests) - 1) / 2) * width, vals, width, label=test)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x, conditions, fontsize=9)
    ax.set_ylabel("WER % (lower is better)")
    # The question is a sentence: wrap it so it is not cut at the figure's edge.
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    if len(tests) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- experiments


def voices(
    out: str | os.PathLike = "experiments/voices",
    options: ExperimentOptions | None = None,
    *,
    train_overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """One voice vs many voices at equal data (same sentences, same clip count), tested on
    voices neither heard (the synthetic source's test voices)."""
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    o = options or ExperimentOptions()
    lab = _Lab(Path(out), o, o.train_config(train_overrides), progress)
    counts = {"train": o.train_clips, "validation": o.validation_clips, "test": o.test_clips}
    conditions = {
        "1 voice": (o.one_voice,),
        f"{len(o.many_voices)} voices": tuple(o.many_voices),
    }
    rows = []
    for label, voice_set in conditions.items():
        # Same seed and counts: the same sentences in every split; one persona per voice.
        source = SyntheticSource(
            SyntheticOptions(seed=o.seed, voices_train=voice_set, speakers_per_voice=1, **counts)
        )
        tag = f"voices-{len(voice_set)}"
        store = lab.store(tag, source)
        if not rows:
            ev = lab.evaluate(o.model, store, "test", PRETRAINED)
            rows.append(_row(PRETRAINED, "unseen voices", ev))
        run, result = lab.train(tag, store)
        ev = lab.evaluate(str(run), store, "test", tag)
        rows.append(_row(label, "unseen voices", ev, hours=_hours(store), result=result))
    question = (
        f"Voice diversity: {o.train_clips} training clips (the same sentences) spoken by 1 "
        f"voice or by {len(o.many_voices)}; tested on {o.test_clips} clips of 3 unseen voices."
    )
    return _finish("voices", question, lab, rows, f"whisper-sv experiment voices --out {out}")


def noise(
    out: str | os.PathLike = "experiments/noise",
    options: ExperimentOptions | None = None,
    *,
    train_overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Clean training vs white-noise augmentation at each SNR in ``snrs``; every model tested
    on the clean test set and on the same clips with noise at ``test_snr``."""
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    o = options or ExperimentOptions()
    lab = _Lab(Path(out), o, o.train_config(train_overrides), progress)
    syn = SyntheticOptions(
        seed=o.seed, train=o.train_clips, validation=o.validation_clips, test=o.test_clips
    )
    clean = lab.store("clean", SyntheticSource(syn))
    # The test split is drawn first and does not depend on the other splits' sizes: a
    # test-only source has the same clips, here with noise added.
    test_only = SyntheticOptions(seed=o.seed, train=0, validation=0, test=o.test_clips)
    noisy_test = lab.store(
        f"test-snr{o.test_snr:g}",
        SyntheticSource(test_only),
        noise_snr_db=o.test_snr,
        augment_splits=("test",),
    )
    tests = {"clean": clean, f"noisy {o.test_snr:g} dB": noisy_test}
    rows = []
    for test, store in tests.items():
        ev = lab.evaluate(o.model, store, "test", f"{PRETRAINED}-{_slug(test)}")
        rows.append(_row(PRETRAINED, test, ev))
    trained = {"clean": clean}
    for snr in o.snrs:
        trained[f"noise {snr:g} dB"] = lab.store(
            f"train-snr{snr:g}", SyntheticSource(syn), noise_snr_db=snr, augment_splits=("train",)
        )
    for label, store in trained.items():
        run, result = lab.train(_slug(label), store)
        for test, test_store in tests.items():
            ev = lab.evaluate(str(run), test_store, "test", f"{_slug(label)}-{_slug(test)}")
            rows.append(_row(label, test, ev, hours=_hours(store), result=result))
    question = (
        f"Noise augmentation: {o.train_clips} training clips, clean or with white noise at "
        f"{', '.join(f'{s:g}' for s in o.snrs)} dB SNR; tested on {o.test_clips} clean clips "
        f"and the same clips at {o.test_snr:g} dB."
    )
    return _finish("noise", question, lab, rows, f"whisper-sv experiment noise --out {out}")


def speaker(
    out: str | os.PathLike = "experiments/speaker",
    options: ExperimentOptions | None = None,
    *,
    words: str | os.PathLike | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Adapt to one real speaker: fine-tune on part of sv-words, test on the held-out words.

    ``words``: the sv-words folder (``manifest.tsv`` + MP3s); default :func:`sv_words_dir`.
    Every word lands in one split by a hash of its file name, so no test word is trained on.
    """
    from whisper_sv.data.sources.manifest import ManifestOptions, ManifestSource

    o = options or ExperimentOptions()
    folder = Path(words) if words else sv_words_dir()
    if not (folder / "manifest.tsv").is_file():
        raise FileNotFoundError(
            f"{folder}/manifest.tsv not found: the speaker experiment needs the sv-words "
            f"recordings (../shared/data/sv-words, or set WHISPER_SV_WORDS)"
        )
    lab = _Lab(Path(out), o, o.train_config(train_overrides), progress)
    source = ManifestSource(
        folder / "manifest.tsv", ManifestOptions(fractions=tuple(o.speaker_fractions))
    )
    store = lab.store("sv-words", source)
    from whisper_sv.data.store import FeatureStore

    fs = FeatureStore(store)
    counts = {s: fs.num_rows(s) for s in fs.splits()}
    ev = lab.evaluate(o.model, store, "test", PRETRAINED)
    rows = [_row(PRETRAINED, "held-out words", ev)]
    run, result = lab.train("adapted", store)
    ev = lab.evaluate(str(run), store, "test", "adapted")
    rows.append(
        _row(
            f"{counts.get('train', 0)} words of the speaker",
            "held-out words",
            ev,
            hours=_hours(store),
            result=result,
        )
    )
    question = (
        f"Speaker adaptation: one real speaker's single-word recordings (sv-words); "
        f"{counts.get('train', 0)} words to train, {counts.get('validation', 0)} to pick the "
        f"checkpoint, {counts.get('test', 0)} held-out words to test."
    )
    return _finish("speaker", question, lab, rows, f"whisper-sv experiment speaker --out {out}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def run_experiment(
    name: str,
    out: str | os.PathLike | None = None,
    options: ExperimentOptions | None = None,
    *,
    train_overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """The experiment ``name`` (one of :data:`EXPERIMENTS`) into ``out``."""
    funcs = {"voices": voices, "noise": noise, "speaker": speaker}
    if name not in funcs:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    t0 = time.perf_counter()
    result = funcs[name](
        out or f"experiments/{name}",
        options,
        train_overrides=train_overrides,
        progress=progress,
    )
    log.info("experiment %s done in %.0f s: %s", name, time.perf_counter() - t0, result.report)
    return result
