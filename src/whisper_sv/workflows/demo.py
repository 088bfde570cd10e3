"""The main job on the embedded default, end to end, within a CPU budget.

synthetic Swedish speech -> feature store -> real speech cut into guard and held-out test
parts -> scores of the pretrained model -> short fine-tune of the decoder (encoder outputs
computed once, short clips packed into 30 s windows), guarded by real speech -> scores after
-> CTranslate2 export -> one test clip transcribed with the export -> the before/after table.

Synthetic speech needs nothing, but it is a proxy: a fine-tune that helps it can make Whisper
worse on real Swedish and make it forget translation. So when real recordings are found
(``realsets.find_real_data``: lexin-phrases and sv-words), the demo cuts them by theme and by
word into a *training* part mixed into the store, a *guard* part, which training checks at
every evaluation together with a long-form file joined from guard phrases (``best/`` never
loses on them, and is chosen by the mean of validation and guard WERs over checkpoints and
WiSE-FT mixes), and a *held-out* part with other phrases and words, scored before and after
along with a 2-minute long-form file of held-out phrases and the English translation. Those
sets share speakers across their parts (in domain); ``cv-dev`` (Common Voice, other speakers
and microphones) is never trained on and guards whole, out of domain: the "general Swedish"
row. Training distils from the start model (``distill``) so that general Swedish holds.

The recipe fits a time budget (``budget``, 15 minutes by default): a few seconds of
calibration measure this machine's encoder, training and scoring rates, and ``budget.plan``
picks the largest recipe predicted to fit, printing it before the long work starts. What
does not change with the recipe is never paid twice: the pretrained model's scores and the
encoder outputs of the test sets, guards and training windows are cached in the user's cache
folder (``set_scores.py``, ``encoder_cache.py``), so a second demo spends its time on the
fine-tune.

Every stage is the project's own public function (``build_store``, ``train``, ``Evaluator``,
``Transcriber``); the demo only chooses small settings. Re-running it reuses what is finished:
the store skips done shards, and the run resumes or is left as is.
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

from whisper_sv.models.references import DEFAULT_MODEL
from whisper_sv.workflows.set_scores import SetScore

log = logging.getLogger(__name__)

__all__ = [
    "DemoOptions",
    "DemoResult",
    "RealSet",
    "build_training_store",
    "fine_tune_guarded",
    "prepare_real_sets",
    "run_demo",
    "size_to_budget",
    "score_sets",
]


# WiSE-FT weights tried after training, in this order (a small budget tries the first two).
# With the out-of-domain guard (cv-dev) only 0.2 held in the runs measured; the in-domain
# guards alone preferred 0.5-0.7 (docs/experiments.md, sections 8 and 9). With LoRA on real
# speech (section 10) try --mixes 0.5 0.3.
WISE_FT = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# Synthetic training sentences when no real speech is found to train on (train_clips = 0).
SYNTHETIC_FALLBACK = 1440


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo-out")  # folder for the store, the run and the report
    model: str = DEFAULT_MODEL  # the pretrained model to fine-tune
    seed: int = 0  # sentences, voices and training order
    # Synthetic training sentences (train voices). 0: real speech alone (docs/experiments.md,
    # section 10); with no real speech found, SYNTHETIC_FALLBACK.
    train_clips: int = 1440
    validation_clips: int = 32  # validation sentences (their own voices), picks best/
    test_clips: int = 48  # test sentences, spoken by voices never used in training
    pack_clips: int = 8  # training clips joined per 30 s window (packing.py); 1: off
    max_steps: int = 250  # optimizer steps of the fine-tune (~4.5 passes over the windows)
    batch_size: int = 4  # windows (of up to pack_clips clips) per step
    lr: float = 1e-4  # peak learning rate (the whole decoder's; 5e-4 with lora_rank)
    # LoRA adapters of this rank on every linear layer of the decoder (peft); 0: the whole
    # decoder trains. LoRA kept far more of general Swedish at step 120 (docs/experiments.md,
    # section 10), but its mixes at --budget 0 kept less than the whole decoder's.
    lora_rank: int = 0
    # Label lowercase unpunctuated transcripts as sentences (FeatureConfig.sentence_case).
    sentence_case: bool = False
    warmup_steps: int = 10  # linear warm-up steps
    eval_steps: int = 125  # validation and guard scores every N steps (the table's rows)
    workers: int = 2  # feature-pipeline processes
    precision: str = "auto"  # training precision (TrainConfig.precision): auto, fp32, bf16, fp16
    # Real speech: a folder holding lexin-phrases/ and/or sv-words/ ("": looked up beside the
    # checkout or in $WHISPER_SV_REAL_DATA; "none": synthetic rows only).
    real_data: str = ""
    guard_clips: int = 96  # clips of each real guard scored at every evaluation (0: all)
    # Clips of each in-domain real held-out set scored before and after (0: all); spread
    # evenly over the set. The out-of-domain set is scored whole: it is a guard too.
    real_test_clips: int = 0
    # WER points the out-of-domain guard (cv-dev: speakers and microphones no training clip
    # has) may lose against the start model; the in-domain guards use guard_tolerance.
    general_tolerance: float = 0.5
    # Share of each real set's groups (themes, words) mixed into the training data; the rest
    # is cut evenly into guard and held-out test. 0: real speech only guards and tests.
    real_train: float = 0.34
    real_repeat: int = 2  # copies of each real training clip (oversampled against synthetic)
    # Guard the translate task too (the share of English answers; guards.py). Off: the English
    # is still scored, and the run, not checked on translation, leaves English to the start
    # model (tasks.py).
    guard_translation: bool = True
    long_form_s: float = 120.0  # seconds of the long-form file of held-out phrases (0: none)
    # seconds of the long-form guard: lexin guard phrases joined into one file (0: none)
    long_form_guard_s: float = 60.0
    # What best/ minimises among models that keep the guards (TrainConfig.select)
    # ("guards": real speech only, for real-speech-only training; validation is synthetic).
    select: str = "validation+guards"
    # Anti-forgetting (docs/experiments.md, section 8).
    timestamp_share: float = 0.5  # share of windows trained with Whisper's timestamps
    # Share of the real training clips also trained alone on the start model's English, where
    # that is English (translation_labels): what keeps translation (docs/experiments.md, sec. 8)
    translate_share: float = 0.5
    prompt_share: float = 0.0  # share of windows trained after the previous window's text
    # Share of the loss that is the KL to the start model's next-token distribution (LwF,
    # train_objective.py), and its temperature: the one method measured that kept general
    # Swedish (cv-dev) from getting worse (docs/experiments.md, section 9). 0: off.
    distill: float = 0.5
    distill_temperature: float = 2.0  # softens both distributions (the KL is scaled by T^2)
    wise_ft: bool = True  # try mixes with the start model's weights after training (WiSE-FT)
    mixes: tuple[float, ...] = WISE_FT  # the WiSE-FT weights of the run, tried in this order
    # Wall-time budget (15m, 900s, 1h; 0: none). Three rates measured on this machine size the
    # recipe (budget.py): the sizes above are the most it runs, the budget may shrink them.
    budget: str = "15m"
    # Measure the rates again instead of reading this machine's from the cache
    # (~/.cache/whisper-sv/rates-*.json): after a hardware or load change.
    recalibrate: bool = False
    train_set: tuple[str, ...] = ()  # further training options, KEY=VALUE (TrainConfig)
    speed: tuple[float, ...] = ()  # speed perturbation factors of the training clips (BuildOptions)

    def __post_init__(self) -> None:
        if min(self.validation_clips, self.test_clips) < 1 or self.train_clips < 0:
            raise ValueError(
                "validation_clips and test_clips must be >= 1, train_clips >= 0 (0: real speech only)"
            )
        if min(self.max_steps, self.eval_steps, self.batch_size, self.pack_clips) < 1:
            raise ValueError("max_steps, eval_steps, batch_size and pack_clips must be >= 1")
        if min(self.guard_clips, self.long_form_s, self.long_form_guard_s) < 0:
            raise ValueError("guard_clips, long_form_s and long_form_guard_s must be >= 0")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (got {self.lora_rank}); 0: the whole decoder")
        if not 0 <= self.real_train < 1 or self.real_repeat < 1:
            raise ValueError("real_train must be in [0, 1) and real_repeat >= 1")
        from whisper_sv.workflows.budget import parse_budget

        parse_budget(self.budget)  # its error names the accepted forms
        if not all(0 < m < 1 for m in self.mixes):
            raise ValueError(f"mixes must be WiSE-FT weights in (0, 1) (got {self.mixes})")


@dataclass(frozen=True)
class DemoRow:
    """One line of the before/after table."""

    name: str  # what was scored
    clips: int  # how many clips (1 for a long-form file)
    metric: str  # "WER %" (lower is better), "chrF" or "English %" (higher is better)
    before: float  # the pretrained model
    after: float  # the fine-tuned run's best/
    cer_before: float | None = None
    cer_after: float | None = None
    # 95% paired-bootstrap interval of after - before, WER points (text.wer_change_interval)
    interval: tuple[float, float] | None = None
    # Error types before and after (text.WordErrors.shares: substitutions, deletions and
    # insertions in WER points, hypothesis length in percent of the reference's)
    errors_before: dict[str, float] | None = None
    errors_after: dict[str, float] | None = None

    @property
    def change(self) -> str:
        if self.metric in ("chrF", "English %"):
            return f"{self.after - self.before:+.1f}"
        return f"{100.0 * (self.after - self.before) / max(self.before, 1e-9):+.0f}%"


@dataclass(frozen=True)
class DemoResult:
    wer_before: float  # percent, synthetic test split, pretrained model
    cer_before: float
    wer_after: float  # percent, synthetic test split, fine-tuned best/
    cer_after: float
    n_test: int  # synthetic test clips scored
    run: Path  # the run folder (metrics, curves, best/, ct2/)
    sample_reference: str  # one test clip's transcript ...
    sample_hypothesis: str  # ... and what the exported model heard
    seconds: dict[str, float]  # wall time per stage
    rows: tuple[DemoRow, ...] = ()  # every scored set: real speech first, synthetic last
    plan: str = ""  # the recipe the budget chose, and its predicted time (budget.Plan.line)
    rates: str = ""  # this machine's measured rates (budget.Rates.line)
    predicted: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per stage
    total_seconds: float = 0.0  # wall time of the whole demo
    # What best/ is, and which candidates lost which guard when it is the start model
    # (train.best_verdict; "" without guards)
    verdict: str = ""

    @property
    def relative_reduction(self) -> float:
        """WER fall relative to the baseline, percent (40 means 40% fewer errors)."""
        return 100.0 * (self.wer_before - self.wer_after) / max(self.wer_before, 1e-9)

    def table(self) -> str:
        lines = [
            "| set | clips | metric | pretrained | fine-tuned | change | 95% interval |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            cer = r.cer_before is not None and r.cer_after is not None
            before = f"{r.before:.1f}" + (f" (CER {r.cer_before:.1f})" if cer else "")
            after = f"{r.after:.1f}" + (f" (CER {r.cer_after:.1f})" if cer else "")
            band = f"{r.interval[0]:+.1f} to {r.interval[1]:+.1f}" if r.interval else "-"
            lines.append(
                f"| {r.name} | {r.clips} | {r.metric} | {before} | {after} | {r.change} | {band} |"
            )
        return "\n".join(lines)

    def time_table(self) -> str:
        """Each stage's wall time against the budget's prediction (budget.estimate)."""
        p = self.predicted
        groups = {
            "real speech, calibration, CTranslate2 sample": (
                ("real", "calibration", "sample"),
                ("other",),
            ),
            "features": (("features",), ("features",)),
            "baseline scores": (("baseline",), ("baseline",)),
            "fine-tune": (("fine-tune",), ("encoding", "training", "evaluations")),
            "fine-tuned scores": (("after",), ("after",)),
        }
        lines = ["| stage | predicted s | wall s |", "|---|---:|---:|"]
        for name, (done, guess) in groups.items():
            wall = sum(self.seconds.get(k, 0.0) for k in done)
            pred = f"{sum(p.get(k, 0.0) for k in guess):.0f}" if p else "-"
            lines.append(f"| {name} | {pred} | {wall:.0f} |")
        total = f"{sum(p.values()):.0f}" if p else "-"
        lines.append(f"| **all** | {total} | {self.total_seconds:.0f} |")
        return "\n".join(lines)

    def error_table(self) -> str:
        """Substitutions, deletions, insertions (WER points) and hypothesis length (% of the
        reference's words) of each clip set, pretrained -> fine-tuned."""
        lines = [
            "| set | substitutions | deletions | insertions | length % |",
            "|---|---:|---:|---:|---:|",
        ]
        keys = ("substitutions", "deletions", "insertions", "length")
        for r in self.rows:
            if r.errors_before is None or r.errors_after is None:
                continue
            cells = [f"{r.errors_before[k]:.1f} -> {r.errors_after[k]:.1f}" for k in keys]
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


class _Stages:
    """Prints each stage's title and, when it ends, its wall time (kept in ``seconds`` under
    the stage's key)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, title: str) -> Iterator[None]:
        print(f"\n== {title}", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[key] = round(time.perf_counter() - t0, 1)
        print(f"   ({self.seconds[key]:.0f} s)", flush=True)


def run_demo(options: DemoOptions | None = None) -> DemoResult:
    """Run the whole job; see the module docstring. Prints progress; returns the figures."""
    from whisper_sv.data.store import FeatureStore
    from whisper_sv.train import best_verdict

    o = options or DemoOptions()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    t0 = time.perf_counter()

    with stage("real", "real speech: training, guard and held-out parts"):
        real = prepare_real_sets(o, out)
    if o.train_clips == 0 and not (real and o.real_train):
        log.warning(
            "no real speech to train on (real_data %r, real_train %g): training on %d synthetic "
            "sentences instead",
            o.real_data,
            o.real_train,
            SYNTHETIC_FALLBACK,
        )
        o = dataclasses.replace(o, train_clips=SYNTHETIC_FALLBACK)
    with stage("calibration", "this machine's rates, and the recipe that fits the budget"):
        o, sized = size_to_budget(o, real)
        real = [_limit_test(r, o.real_test_clips, out / "real") for r in real]
    with stage("features", "features"):
        source = build_training_store(o, out / "store", real if o.real_train else [])
        store = FeatureStore(out / "store")
    with stage("baseline", f"baseline: {o.model} on the test sets"):
        before = score_sets(o.model, store, real, o)
        _print_scores(before)
    title = "fine-tune (decoder on cached encoder outputs, guarded by real speech)"
    with stage("fine-tune", title):
        run = fine_tune_guarded(o, out / "store", out / "run", real)
        print((run / "metrics.md").read_text(encoding="utf-8"))
    with stage("after", "fine-tuned model on the test sets"):
        after = score_sets(str(run), store, real, o, start=before)
        _print_scores(after)
    with stage("sample", "transcribe one test clip with the CTranslate2 export"):
        reference, hypothesis = _sample_transcript(source, out, run)
        print(f"   reference:  {reference}\n   fine-tuned: {hypothesis}")

    syn_before, syn_after = before["synthetic"], after["synthetic"]
    res = DemoResult(
        wer_before=syn_before.wer,
        cer_before=syn_before.cer,
        wer_after=syn_after.wer,
        cer_after=syn_after.cer,
        n_test=syn_after.n,
        run=run,
        sample_reference=reference,
        sample_hypothesis=hypothesis,
        seconds=stage.seconds,
        rows=_rows(before, after, real, translation_guarded=o.guard_translation),
        plan=sized.line(),
        rates=sized.rates.line(),
        predicted=sized.seconds,
        total_seconds=round(time.perf_counter() - t0, 1),
        verdict=best_verdict(run),
    )
    _write_report(out, res)
    return res


def size_to_budget(o: DemoOptions, real: list[RealSet]) -> tuple[DemoOptions, Any]:
    """``o`` with the sizes the budget allows on this machine (budget.py), and the plan;
    prints the measured rates and the plan before anything long starts."""
    from whisper_sv.core.fsutil import cache_dir
    from whisper_sv.core.runtime import resolve_precision
    from whisper_sv.models.references import load_model
    from whisper_sv.workflows.budget import (
        Rates,
        Sizes,
        calibrate,
        machine_rates,
        parse_budget,
        plan,
        rates_key,
    )

    precision = resolve_precision(o.precision, cuda=False)
    distill = o.distill > 0

    def measure() -> Rates:
        model, _ = load_model(o.model)
        return calibrate(model, precision=precision, batch_size=o.batch_size, distill=distill)

    key = rates_key(precision=precision, batch_size=o.batch_size, distill=distill, model=o.model)
    rates = machine_rates(measure, key, cache_dir(), recalibrate=o.recalibrate)
    work = _workload(o, real)
    # Sizes' fields are DemoOptions fields of the same names.
    names = [f.name for f in dataclasses.fields(Sizes)]
    given = {n: getattr(o, n) for n in names}
    given["guard_clips"] = o.guard_clips or max(work.guards, default=0)  # 0: every clip
    given["mixes"] = o.mixes if o.wise_ft else ()
    asked = Sizes(**given)
    chosen = plan(asked, work, rates, parse_budget(o.budget))
    print(f"   rates: {rates.line()}\n   plan: {chosen.line()}", flush=True)
    kept = {n: getattr(chosen.sizes, n) for n in names}
    kept["mixes"] = chosen.sizes.mixes or o.mixes  # with wise_ft off they stay unused
    return dataclasses.replace(o, **kept), chosen


def _workload(o: DemoOptions, real: list[RealSet]) -> Any:
    """The clip counts of the real sets' parts, for the budget's predictions."""
    from whisper_sv.workflows.budget import Workload

    def clips(path: Path | None) -> int:
        return len(path.read_text("utf-8").splitlines()) - 1 if path is not None else 0

    lexin = next((r for r in real if r.translate), None)
    return Workload(
        real_train=sum(clips(r.train) for r in real) if o.real_train else 0,
        guards=tuple(clips(r.guard) for r in real),
        translate_guard=clips(lexin.guard) if lexin and o.guard_translation else 0,
        real_tests=tuple(clips(r.test) for r in real if r.domain == "in"),
        general_test=sum(clips(r.test) for r in real if r.domain == "out"),
        translate_test=clips(lexin.test) if lexin else 0,
        long_form_s=o.long_form_s if lexin else 0.0,
        long_form_guard_s=o.long_form_guard_s if lexin else 0.0,
        pack_clips=o.pack_clips,
        translate_share=o.translate_share,
    )


def build_training_store(o: DemoOptions, path: Path, real: list[RealSet]) -> Any:
    """The store: synthetic speech, with the real sets' training parts mixed into its train
    split when there are any (``real_repeat`` copies each); returns the source."""
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    source = open_source(
        "synthetic",
        seed=o.seed,
        train=o.train_clips,
        validation=o.validation_clips,
        test=o.test_clips,
    )
    parts = [r.train for r in real if r.train is not None]
    if parts:
        from whisper_sv.data.sources.manifest import ManifestOptions, ManifestSource
        from whisper_sv.data.sources.mix import MixPart, MixSource

        tsv = path.parent / "real" / "train.tsv"
        rows = [line for p in parts for line in p.read_text("utf-8").splitlines()[1:]]

        tsv.write_text("\n".join(["path\tsentence\tgroup", *rows]) + "\n", encoding="utf-8")
        real_source = ManifestSource(tsv, ManifestOptions(split="train"))
        source = MixSource(
            [MixPart("syn", source), MixPart("real", real_source, repeat=o.real_repeat)]
        )
    summary = build_store(
        source,
        path,
        BuildOptions(
            model=o.model,
            workers=o.workers,
            seed=o.seed,
            speed=o.speed,
            sentence_case=o.sentence_case,
        ),
    )
    print(summary.table())
    return source


@dataclass(frozen=True)
class RealSet:
    """A held-out real test set and the guard cut from the same recordings."""

    name: str  # "lexin-phrases"
    label: str  # how the table names its held-out part
    guard: Path  # manifest of the guard part
    test: Path  # manifest of the held-out part
    translate: bool  # score (and guard) the translate task on it
    train: Path | None = None  # manifest of the part mixed into training (real_train > 0)
    domain: str = "in"  # "out": speakers training never heard (guards.GuardSpec.domain)
    held_out: Path | None = None  # the whole held-out part when ``test`` is a share of it


def _limit_test(r: RealSet, n: int, out: Path) -> RealSet:
    """``r`` with ``n`` clips of its held-out part as the test, evenly spaced over it (the part
    is in group order: themes, words); the out-of-domain set stays whole."""
    lines = r.test.read_text("utf-8").splitlines()
    if not n or r.domain == "out" or len(lines) - 1 <= n:
        return r
    rows = lines[1:]
    kept = [rows[i * len(rows) // n] for i in range(n)]
    path = out / f"{r.name}-test-{n}.tsv"
    path.write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
    return dataclasses.replace(r, test=path, held_out=r.test)


def prepare_real_sets(o: DemoOptions, out: Path) -> list[RealSet]:
    """The real sets found, each cut into guard and held-out parts (``out/real/``)."""
    from whisper_sv.data.realsets import OUT_OF_DOMAIN, REAL_SETS, find_real_data, split_by_group

    if o.real_data == "none":
        print("   real speech turned off (--real-data none): synthetic rows only")
        return []
    root = Path(o.real_data) if o.real_data else find_real_data()
    if root is None:
        print(
            "   no real speech found (set WHISPER_SV_REAL_DATA to a folder holding "
            "lexin-phrases/ or sv-words/): synthetic rows only, no guards"
        )
        return []
    sets = []
    labels = {"lexin-phrases": "held-out themes", "sv-words": "held-out words"}
    for name, group in REAL_SETS.items():
        if not (root / name / "manifest.tsv").is_file():
            continue
        if name in OUT_OF_DOMAIN:
            sets.append(_general_set(root / name, out / "real", group))
            continue
        rest = (1.0 - o.real_train) / 2
        shares = {"guard": rest, "test": rest, **({"train": o.real_train} if o.real_train else {})}
        cut = split_by_group(root / name, out / "real", shares=shares, group_column=group)
        print(
            f"   {name}: training {cut.counts.get('train', 0)} clips, guard "
            f"{cut.counts['guard']}, held out {cut.counts['test']} (by {group or 'word'})"
        )
        sets.append(
            RealSet(
                name=name,
                label=f"real: {name}, {labels.get(name, 'held out')}",
                guard=cut.parts["guard"],
                test=cut.parts["test"],
                translate=name == "lexin-phrases",
                train=cut.parts.get("train"),
            )
        )
    return sets


def _general_set(folder: Path, out: Path, group: str | None) -> RealSet:
    """An out-of-domain set, whole: it guards every model decision and is the table's
    general-Swedish row (so that row is the guard's own result; the speakers are new to the
    model either way). Never trained on."""
    from whisper_sv.data.realsets import split_by_group

    cut = split_by_group(folder, out, shares={"guard": 1.0}, group_column=group)
    speakers = len(cut.groups["guard"])
    print(
        f"   {folder.name}: {cut.counts['guard']} clips of {speakers} speakers guard general "
        "Swedish (out of domain: never trained on)"
    )
    return RealSet(
        name=folder.name,
        label=f"general Swedish: {folder.name}, {speakers} unseen speakers (out-of-domain guard)",
        guard=cut.parts["guard"],
        test=cut.parts["guard"],
        translate=False,
        domain="out",
    )


def fine_tune_guarded(o: DemoOptions, store: Path, run: Path, real: list[RealSet]) -> Path:
    """Train the decoder on the store's train split, guarded by the real sets; the run."""
    from whisper_sv.core.config import from_mapping, parse_overrides
    from whisper_sv.core.fsutil import cache_dir
    from whisper_sv.train.run import TrainConfig, train

    guards = [
        {
            "name": r.name,
            "path": str(r.guard),
            "translate": r.translate and o.guard_translation,
            "limit": o.guard_clips,
            "domain": r.domain,
            **({"tolerance": o.general_tolerance} if r.domain == "out" else {}),
        }
        for r in real
    ]
    lexin = next((r for r in real if r.translate), None)
    if lexin is not None and o.long_form_guard_s > 0:
        # The long-form check of the held-out test, on guard phrases: the same kind of file.
        guards.append(
            {"name": "long-form", "path": str(lexin.guard), "long_form": o.long_form_guard_s}
        )
    options = {
        "lr": o.lr,
        "warmup_steps": o.warmup_steps,
        "batch_size": o.batch_size,
        "max_steps": o.max_steps,
        "eval_steps": o.eval_steps,
        "save_steps": o.eval_steps,
        "eval_at_start": True,
        "freeze_encoder": True,
        "cache_encoder": True,
        "pack_clips": o.pack_clips,
        "precision": o.precision,
        "seed": o.seed,
        # Encoder outputs in the user's cache, not the run: a later demo reuses them.
        "cache_dir": str(cache_dir() / "encoder"),
        "guards": guards,
        "select": o.select,
        # A candidate that lost a guard is not scored on the rest (general Swedish is first):
        # the budget's estimate still pays for every guard, the cost of a model that holds.
        "guard_early_reject": True,
        "timestamp_share": o.timestamp_share,
        "translate_share": o.translate_share,
        # Real clips only: the start model translates them more reliably than synthetic ones,
        # and a share of every clip would spend the steps on translation (F2 in sec. 8).
        "translate_sources": ["manifest"],
        "prompt_share": o.prompt_share,
        "distill": o.distill,
        "distill_temperature": o.distill_temperature,
        "interpolate": list(o.mixes) if o.wise_ft else [],
        **(_LORA | {"lora_rank": o.lora_rank} if o.lora_rank else {}),
        **parse_overrides(list(o.train_set)),
    }
    config = from_mapping(TrainConfig, options)
    return train(store, run, model=o.model, config=config).run


# Adapters on every linear layer of the decoder's blocks (attention and MLP).
_LORA = {"lora_targets": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}


def score_sets(
    model_ref: str,
    store: Any,
    real: list[RealSet],
    o: DemoOptions,
    start: dict[str, SetScore] | None = None,
) -> dict[str, SetScore]:
    """``model_ref`` on the synthetic test split, each real held-out part (and its English),
    and the long-form file. ``start``: the pretrained model's scores, for the chrF.

    Scores come from the cache when this model (by its weights) has scored this set (by its
    bytes) with these options before (set_scores.py)."""
    from whisper_sv.core.fsutil import cache_dir
    from whisper_sv.models.references import load_model
    from whisper_sv.train.guards import GuardSpec, chrf, english_share, prepare_guard_store
    from whisper_sv.workflows.set_scores import weights_digest

    model, processor = load_model(model_ref)
    # Once per model: the whole model keys the scores, the encoder its outputs.
    digests = {"model": weights_digest(model), "encoder": weights_digest(model.get_encoder())}
    scores = {"synthetic": _score_split(model, processor, store, "test", o, digests)}
    for r in real:
        spec = GuardSpec(f"{r.name}-test", str(r.test))
        test_store, split = prepare_guard_store(
            spec, model=o.model, cache_root=cache_dir(), processor=processor
        )
        score = _score_split(model, processor, test_store, split, o, digests, translate=r.translate)
        if r.translate:
            score = dataclasses.replace(score, english=english_share(score.translations))
        if r.translate and start and r.name in start:
            agree = chrf(score.translations, start[r.name].translations)
            score = dataclasses.replace(score, chrf=agree)
        scores[r.name] = score
    lexin = next((r for r in real if r.translate), real[0] if real else None)
    if lexin is not None and o.long_form_s > 0:
        source = lexin.held_out or lexin.test
        scores["long-form"] = _long_form(model_ref, source, Path(o.out), o, digests["model"])
    return scores


def _score_split(
    model: Any,
    processor: Any,
    store: Any,
    split: str,
    o: DemoOptions,
    digests: dict[str, str],
    translate: bool = False,
) -> SetScore:
    """Greedy WER/CER (and English) of ``model`` on a store split, in the training precision;
    from the score cache when it holds them."""
    from whisper_sv.core.runtime import resolve_precision
    from whisper_sv.workflows.set_scores import load_score, save_score, split_digest

    bf16 = resolve_precision(o.precision, cuda=False) == "bf16"
    content = split_digest(store, split)
    key = {
        "model": digests["model"],
        "set": content,
        "translate": translate,
        "bf16": bf16,
        "max_new_tokens": 225,
    }
    cached = load_score(key)
    if cached is not None:
        print(f"   {store.path.name}/{split}: scores of this model read from the cache")
        return cached
    score = _decode_split(
        model, processor, store, split, digests["encoder"], content, bf16, translate
    )
    save_score(key, score)
    return score


def _decode_split(
    model: Any,
    processor: Any,
    store: Any,
    split: str,
    encoder: str,
    content: str,
    bf16: bool,
    translate: bool,
) -> SetScore:
    """Score a split; its encoder outputs are read from (or written to) the encoder cache."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from whisper_sv.data.store import collate
    from whisper_sv.train.scoring import Evaluator, finish_eval
    from whisper_sv.workflows.set_scores import load_encoded, save_encoded

    lang = store.config.language
    ev = Evaluator(processor, model, language=lang, task="transcribe", max_new_tokens=225)
    tr = Evaluator(processor, model, language=lang, task="translate", max_new_tokens=225)
    enc_key = {"encoder": encoder, "set": content, "bf16": bf16}
    cached = load_encoded(enc_key)
    fresh: list[np.ndarray] = []
    parts, english, done = [], [], 0
    model.eval()
    loader = DataLoader(store.torch_dataset(split), batch_size=16, collate_fn=collate)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            n = len(batch["labels"])
            if cached is not None:
                hidden = torch.from_numpy(np.asarray(cached[done : done + n])).float()
            else:
                # Rounded to float16 as stored, so the first model decodes what later ones do.
                out = model.get_encoder()(batch["input_features"]).last_hidden_state
                fresh.append(out.to(torch.float16).numpy())
                hidden = torch.from_numpy(fresh[-1]).float()
            done += n
            parts.append(ev.batch(model, hidden, batch["labels"]))
            if translate:
                english += tr.batch(model, hidden, batch["labels"])[3]
    if cached is None and fresh:
        save_encoded(enc_key, np.concatenate(fresh))
    res = finish_eval(parts, 0.0)
    return SetScore(
        res.wer,
        res.cer,
        res.n,
        translations=tuple(english),
        references=res.references,
        hypotheses=res.hypotheses,
    )


def _long_form(model_ref: str, manifest: Path, out: Path, o: DemoOptions, weights: str) -> SetScore:
    """WER of the whole long-form file transcribed by the CTranslate2 model (as users run it);
    from the score cache when this model has transcribed this audio before."""
    from whisper_sv.core.fsutil import file_digest
    from whisper_sv.core.text import error_rates
    from whisper_sv.data.longform import join_clips
    from whisper_sv.infer.transcriber import Transcriber
    from whisper_sv.workflows.set_scores import load_score, save_score

    long = join_clips(manifest, out / "real" / "long-form.wav", seconds=o.long_form_s, seed=o.seed)
    key = {"model": weights, "audio": file_digest(long.path), "long_form": "transcriber-defaults"}
    cached = load_score(key)
    if cached is not None:
        print("   long-form: the transcript of this model read from the cache")
        return cached
    transcript = Transcriber(model_ref).transcribe(long.path)
    rates = error_rates([long.reference], [transcript.text])
    score = SetScore(
        rates.wer,
        rates.cer,
        1,
        segments=len(transcript.segments),
        references=(long.reference,),
        hypotheses=(transcript.text,),
    )
    save_score(key, score)
    return score


def _print_scores(scores: dict[str, SetScore]) -> None:
    for name, s in scores.items():
        extra = f", translations in English {s.english:.1f}%" if s.english is not None else ""
        extra += f", English chrF vs pretrained {s.chrf:.1f}" if s.chrf is not None else ""
        cues = f", {s.segments} segments" if s.segments else ""
        print(f"   {name}: WER {s.wer:.1f}%  CER {s.cer:.1f}%  ({s.n} clips{cues}){extra}")


def _rows(
    before: dict[str, SetScore],
    after: dict[str, SetScore],
    real: list[RealSet],
    *,
    translation_guarded: bool = False,
) -> tuple[DemoRow, ...]:
    from whisper_sv.core.text import error_types, wer_change_interval

    def row(name: str, key: str) -> DemoRow:
        b, a = before[key], after[key]
        band = errors = None
        if a.references and a.references == b.references:
            band = wer_change_interval(a.references, b.hypotheses, a.hypotheses)
            errors = [error_types(a.references, s.hypotheses).shares() for s in (b, a)]
        return DemoRow(name, a.n, "WER %", b.wer, a.wer, b.cer, a.cer, band, *(errors or ()))

    # Real speech leads: the held-out parts of the training speakers (what the fine-tune is
    # for), then general Swedish (out of domain: whether the run may be used), then long-form
    # and English; synthetic speech is a means, and its row comes last.
    rows = [row(r.label, r.name) for r in sorted(real, key=lambda r: r.domain == "out")]
    if "long-form" in after:
        b, a = before["long-form"], after["long-form"]
        name = (
            f"real long-form: one file of held-out phrases ({b.segments} -> {a.segments} segments)"
        )
        errors = [error_types(a.references, s.hypotheses).shares() for s in (b, a)]
        rows.append(DemoRow(name, 1, "WER %", b.wer, a.wer, b.cer, a.cer, None, *errors))
    for r in real:
        b, a = before.get(r.name), after[r.name]
        if not r.translate or a.chrf is None or b is None or b.english is None:
            continue
        note = (
            ""
            if translation_guarded
            else " (not guarded: transcribe and the app take the English from the pretrained model)"
        )
        name = f"translate: {r.name} held out, share of translations in English{note}"
        rows.append(DemoRow(name, a.n, "English %", b.english, a.english or 0.0))
        name = f"translate: {r.name} held out, the run's English vs the pretrained model's"
        rows.append(DemoRow(name, a.n, "chrF", 100.0, a.chrf))
    rows.append(row("synthetic test, unseen voices", "synthetic"))
    return tuple(rows)


def _sample_transcript(source: Any, out: Path, run: Path) -> tuple[str, str]:
    """(reference, transcript) of the first test clip, transcribed from the run's export."""
    import soundfile as sf

    from whisper_sv.core.audio import SAMPLE_RATE
    from whisper_sv.infer.transcriber import Transcriber

    item = next(iter(source.items("test")))
    wav = out / "test-clip.wav"
    sf.write(wav, source.load(item), SAMPLE_RATE)
    return item.sentence, Transcriber(str(run)).transcribe(wav).text


def _write_report(out: Path, res: DemoResult) -> None:
    """``demo.json`` and ``demo.md`` in ``out``; the table printed too."""
    report = {k: v for k, v in dataclasses.asdict(res).items() if k != "run"}
    report.update(run=str(res.run), relative_reduction=res.relative_reduction)
    report["rows"] = [{**dataclasses.asdict(r), "change": r.change} for r in res.rows]
    (out / "demo.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    verdict = f"\n\n{res.verdict}" if res.verdict else ""
    errors = verdict + "\n\nError types, pretrained -> fine-tuned:\n\n" + res.error_table()
    timing = (
        f"\n\nRecipe: {res.plan}\n\nRates: {res.rates}\n\n"
        f"Time ({res.total_seconds / 60:.1f} min):\n\n{res.time_table()}"
    )
    (out / "demo.md").write_text(res.table() + errors + timing + "\n", encoding="utf-8")
    print("\n" + res.table() + errors + timing)
    print(
        f"\nrun folder: {res.run} (metrics.md, curves.png, best/, ct2/, model_card.md)"
        f"\nreport: {out / 'demo.md'}"
    )
