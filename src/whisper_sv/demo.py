"""The main job on the embedded default, end to end, within a CPU budget.

synthetic Swedish speech -> feature store -> WER of the pretrained model on the test split
(voices never heard in training) -> short fine-tune of the decoder (encoder outputs computed
once, short clips packed into 30 s windows so that computing them is cheap) -> WER after -> CTranslate2 export ->
one test clip transcribed with the exported model -> the before/after table.

Every stage is the project's own public function (``build_store``, ``train``,
``evaluate_dataset``, ``Transcriber``); the demo only chooses small settings. Re-running it
reuses what is finished: the store skips done shards, and the run resumes or is left as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.models import DEFAULT_MODEL

log = logging.getLogger(__name__)

__all__ = ["DemoOptions", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo-out")  # folder for the store, the run and the report
    model: str = DEFAULT_MODEL  # the pretrained model to fine-tune
    seed: int = 0  # sentences, voices and training order
    train_clips: int = 1440  # synthetic training sentences (train voices)
    validation_clips: int = 32  # validation sentences (their own voices), picks best/
    test_clips: int = 48  # test sentences, spoken by voices never used in training
    pack_clips: int = 8  # training clips joined per 30 s window (packing.py); 1: off
    max_steps: int = 150  # optimizer steps of the fine-tune (~2.7 passes over the windows)
    batch_size: int = 4  # windows (of up to pack_clips clips) per step
    lr: float = 1e-4  # peak learning rate (decoder only: a higher rate than the blog's 1e-5)
    warmup_steps: int = 10  # linear warm-up steps
    eval_steps: int = 30  # validation WER every N steps (the table's rows)
    workers: int = 2  # feature-pipeline processes
    precision: str = "auto"  # training precision (TrainConfig.precision): auto, fp32, bf16

    def __post_init__(self) -> None:
        if min(self.train_clips, self.validation_clips, self.test_clips) < 1:
            raise ValueError("train_clips, validation_clips and test_clips must be >= 1")
        if min(self.max_steps, self.eval_steps, self.batch_size, self.pack_clips) < 1:
            raise ValueError("max_steps, eval_steps, batch_size and pack_clips must be >= 1")


@dataclass(frozen=True)
class DemoResult:
    wer_before: float  # percent, test split, pretrained model
    cer_before: float
    wer_after: float  # percent, test split, fine-tuned best/
    cer_after: float
    n_test: int  # test clips scored
    run: Path  # the run folder (metrics, curves, best/, ct2/)
    sample_reference: str  # one test clip's transcript ...
    sample_hypothesis: str  # ... and what the exported model heard
    seconds: dict[str, float]  # wall time per stage

    @property
    def relative_reduction(self) -> float:
        """WER fall relative to the baseline, percent (40 means 40% fewer errors)."""
        return 100.0 * (self.wer_before - self.wer_after) / max(self.wer_before, 1e-9)

    def table(self) -> str:
        return "\n".join(
            [
                "| model | test WER % | test CER % |",
                "|---|---|---|",
                f"| pretrained ({self.n_test} clips, unseen voices) | "
                f"{self.wer_before:.1f} | {self.cer_before:.1f} |",
                f"| fine-tuned | {self.wer_after:.1f} | {self.cer_after:.1f} |",
                f"| relative WER reduction | {self.relative_reduction:.0f}% | |",
            ]
        )


def _test_wer(model_ref: str, store, batch_size: int = 16):
    """WER/CER on the store's test split: identical features and greedy decoding for every
    model, so the before/after numbers differ only by the weights."""
    from whisper_sv.evaluation import evaluate_split

    return evaluate_split(model_ref, store, "test", batch_size=batch_size)


class _Stages:
    """Prints each stage's title and, when it ends, its wall time (kept in ``seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"   ({self.seconds[name]:.0f} s)", flush=True)


def run_demo(options: DemoOptions | None = None) -> DemoResult:
    """Run the whole job; see the module docstring. Prints progress; returns the figures."""
    from whisper_sv.features import BuildOptions, build_store
    from whisper_sv.sources import open_source
    from whisper_sv.store import FeatureStore

    o = options or DemoOptions()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()

    with stage("features"):
        source = open_source(
            "synthetic",
            seed=o.seed,
            train=o.train_clips,
            validation=o.validation_clips,
            test=o.test_clips,
        )
        summary = build_store(
            source, out / "store", BuildOptions(model=o.model, workers=o.workers, seed=o.seed)
        )
        print(summary.table())
        store = FeatureStore(out / "store")

    with stage(f"baseline: {o.model} on the test split"):
        before = _test_wer(o.model, store)
        print(f"   WER {before.wer:.1f}%  CER {before.cer:.1f}%  ({before.n} clips)")

    with stage("fine-tune (decoder on cached encoder outputs, clips packed in 30 s windows)"):
        run = _fine_tune(o, out)
        print((run / "metrics.md").read_text(encoding="utf-8"))

    with stage("fine-tuned model on the test split"):
        after = _test_wer(str(run), store)
        print(f"   WER {after.wer:.1f}%  CER {after.cer:.1f}%  ({after.n} clips)")

    with stage("transcribe one test clip with the CTranslate2 export"):
        reference, hypothesis = _sample_transcript(source, out, run)
        print(f"   reference:  {reference}\n   fine-tuned: {hypothesis}")

    res = DemoResult(
        wer_before=before.wer,
        cer_before=before.cer,
        wer_after=after.wer,
        cer_after=after.cer,
        n_test=after.n,
        run=run,
        sample_reference=reference,
        sample_hypothesis=hypothesis,
        seconds=stage.seconds,
    )
    _write_report(out, res)
    return res


def _fine_tune(o: DemoOptions, out: Path) -> Path:
    """Train the decoder on the store's train split; the run folder."""
    from whisper_sv.train import TrainConfig, train

    config = TrainConfig(
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        batch_size=o.batch_size,
        max_steps=o.max_steps,
        eval_steps=o.eval_steps,
        save_steps=o.eval_steps,
        eval_at_start=True,
        freeze_encoder=True,
        cache_encoder=True,
        pack_clips=o.pack_clips,
        precision=o.precision,
        seed=o.seed,
    )
    return train(out / "store", out / "run", model=o.model, config=config).run


def _sample_transcript(source: Any, out: Path, run: Path) -> tuple[str, str]:
    """(reference, transcript) of the first test clip, transcribed from the run's export."""
    import soundfile as sf

    from whisper_sv.audio import SAMPLE_RATE
    from whisper_sv.infer import Transcriber

    item = next(iter(source.items("test")))
    wav = out / "test-clip.wav"
    sf.write(wav, source.load(item), SAMPLE_RATE)
    return item.sentence, Transcriber(str(run)).transcribe(wav).text


def _write_report(out: Path, res: DemoResult) -> None:
    """``demo.json`` and ``demo.md`` in ``out``; the table printed too."""
    report = {k: v for k, v in dataclasses.asdict(res).items() if k != "run"}
    report.update(run=str(res.run), relative_reduction=res.relative_reduction)
    (out / "demo.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    (out / "demo.md").write_text(res.table() + "\n", encoding="utf-8")
    print("\n" + res.table())
    print(
        f"\nrun folder: {res.run} (metrics.md, curves.png, best/, ct2/, model_card.md)"
        f"\nreport: {out / 'demo.md'}"
    )
