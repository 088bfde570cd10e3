"""Real-speech guards: held-out sets that every model decision is checked against.

Fine-tuning on a proxy (synthetic espeak-ng speech) can improve the proxy's test while making
Whisper worse on real Swedish and make it forget the translate task. A *guard* is a set of real
recordings scored at every evaluation next to the validation split; ``best/`` is chosen only
among models whose guards stay within a tolerance of the starting model's (see
:func:`regressions`).

A guard is a manifest TSV (``path`` + ``sentence`` columns, any audio format) or a feature
store split. A manifest is turned into a feature store once, by the feature pipeline, into a
cache keyed by the manifest's content, so the guard's log-mel and labels are exactly what
training and evaluation read everywhere else.

Two checks per guard:

- **transcribe**: WER and CER of the model's greedy transcript against the reference;
- **translate** (``translate: true``): the share of the model's translations that are
  English (``english_share``: lingua's English-or-Swedish detector), and their chrF against the
  *starting* model's translations of the same clips (100 at step 0). A run that forgets the
  translate task answers in Swedish: its English share falls (75% -> 20% on held-out lexin
  phrases, measured in docs/experiments.md). The chrF agreement is reported but by default not
  judged: Whisper base's English of short Swedish phrases is mostly guesswork ("Subscribe to
  the channel" for "godkänner"), so a model that hears better agrees with it less.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_sv.core.fsutil import file_digest

log = logging.getLogger(__name__)

__all__ = [
    "GuardSpec",
    "GuardCheck",
    "chrf",
    "columns_of",
    "english_share",
    "manifest_key",
    "prepare_guard_store",
    "regressions",
    "selection_score",
]

WER_SUFFIX = " WER"
CER_SUFFIX = " CER"
CHRF_SUFFIX = " translate chrF"
ENGLISH_SUFFIX = " translate English %"  # share of translations detected as English
SEGMENTS_SUFFIX = " segments"  # long-form guards: segments transcribed (reported, not judged)
DOMAINS = ("", "in", "out")
DOMAIN_NAMES = {"": "domain not stated", "in": "in domain", "out": "out of domain"}


@dataclass(frozen=True)
class GuardSpec:
    """One real-speech set scored at every evaluation (``TrainConfig.guards``)."""

    name: str  # column prefix in metrics.csv ("lexin" -> "lexin WER", "lexin CER")
    path: str  # a manifest TSV (path + sentence columns) or a feature store folder
    split: str = ""  # store split to use; "" picks "test", else "validation" (manifests: all)
    translate: bool = False  # also check the translate task (English share; chrF vs the start's)
    limit: int = 0  # the first N clips only; 0: all
    # > 0: the manifest's clips joined into one file of about this many seconds, transcribed
    # window by window with timestamps (guard_longform.py) instead of clip by clip.
    long_form: float = 0.0
    # "in": the same speakers or recordings as the training data; "out": speakers, microphones
    # or styles training never had (what says whether general Swedish got worse); "": unsaid.
    domain: str = ""
    # WER points this guard may lose against the start model; < 0: the run's guard_tolerance.
    tolerance: float = -1.0

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(
                f"guard {self.name!r}: domain {self.domain!r}; use 'in' (the training speakers) "
                "or 'out' (speakers and recordings training never had), or leave it empty"
            )
        if not self.name or any(c in self.name for c in ",=\t\n"):
            raise ValueError(f"guard name {self.name!r}: give a short name without , = or tabs")
        if not self.path:
            raise ValueError(f"guard {self.name!r}: path is empty; give a manifest TSV or a store")
        if self.limit < 0:
            raise ValueError(f"guard {self.name!r}: limit must be >= 0 (got {self.limit})")
        if self.long_form < 0:
            raise ValueError(
                f"guard {self.name!r}: long_form must be >= 0 s (got {self.long_form})"
            )
        if self.long_form and self.translate:
            raise ValueError(
                f"guard {self.name!r}: a long-form guard checks transcripts only; give the "
                "translate check its own guard on the same manifest"
            )

    @classmethod
    def parse(cls, text: str) -> GuardSpec:
        """``NAME=PATH[,translate][,split=S][,limit=N][,long_form=S][,domain=D][,tolerance=T]``
        (``--set guards=[...]``)."""
        head, *flags = [p.strip() for p in text.split(",")]
        name, sep, path = head.partition("=")
        if not sep:
            raise ValueError(
                f"guard {text!r} is not NAME=PATH (example: lexin=data/lexin/manifest.tsv,translate)"
            )
        kwargs: dict[str, Any] = {"name": name.strip(), "path": path.strip()}
        for flag in flags:
            key, sep, value = flag.partition("=")
            if key == "translate" and not sep:
                kwargs["translate"] = True
            elif key == "split" and sep:
                kwargs["split"] = value
            elif key == "limit" and sep and value.isdigit():
                kwargs["limit"] = int(value)
            elif key == "long_form" and sep and value.replace(".", "", 1).isdigit():
                kwargs["long_form"] = float(value)
            elif key == "domain" and sep:
                kwargs["domain"] = value
            elif key == "tolerance" and sep and value.replace(".", "", 1).isdigit():
                kwargs["tolerance"] = float(value)
            else:
                raise ValueError(
                    f"guard {text!r}: unknown flag {flag!r}; flags are translate, split=S, "
                    "limit=N, long_form=SECONDS, domain=in|out, tolerance=POINTS"
                )
        return cls(**kwargs)

    @classmethod
    def coerce(cls, value: Any) -> GuardSpec:
        """A spec from its YAML mapping, its ``NAME=PATH`` text, or a spec."""
        if isinstance(value, GuardSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            from whisper_sv.core.config import from_mapping

            return from_mapping(cls, value)
        raise ValueError(f"guard {value!r}: give NAME=PATH or a mapping with name and path")

    def columns(self) -> list[str]:
        """The metrics columns this guard adds."""
        cols = [self.name + WER_SUFFIX, self.name + CER_SUFFIX]
        if self.long_form:
            cols.append(self.name + SEGMENTS_SUFFIX)
        return cols + (
            [self.name + ENGLISH_SUFFIX, self.name + CHRF_SUFFIX] if self.translate else []
        )


@dataclass(frozen=True)
class GuardCheck:
    """How one model's guard values compare with the start model's."""

    column: str  # e.g. "lexin WER"
    start: float  # the start model's value (step 0)
    value: float  # this model's value
    tolerance: float  # allowed worsening, in the column's unit

    @property
    def worse_by(self) -> float:
        """How much worse than the start (positive: worse). chrF and English share are better
        when higher."""
        if self.column.endswith((CHRF_SUFFIX, ENGLISH_SUFFIX)):
            return self.start - self.value
        return self.value - self.start

    @property
    def regressed(self) -> bool:
        return self.worse_by > self.tolerance + 1e-9

    def describe(self) -> str:
        return (
            f"{self.column} {self.start:.2f} -> {self.value:.2f} "
            f"({self.worse_by:+.2f}, tolerance {self.tolerance:g})"
        )


def columns_of(specs: Sequence[GuardSpec]) -> list[str]:
    return [c for s in specs for c in s.columns()]


def regressions(
    values: Mapping[str, float],
    start: Mapping[str, float],
    *,
    wer_tolerance: float,
    chrf_tolerance: float,
    english_tolerance: float = 100.0,
    specs: Sequence[GuardSpec] = (),
) -> list[GuardCheck]:
    """The guard columns of ``values`` that are worse than ``start`` beyond the tolerance.

    WER columns use ``wer_tolerance`` (points), or the ``tolerance`` of their guard in
    ``specs`` where it sets one; chrF columns ``chrf_tolerance`` and English share columns
    ``english_tolerance`` (points, lower is worse). CER and segment columns are reported in the
    table but do not decide (a CER change without a WER change is not a lost word).
    """
    own = {s.name + WER_SUFFIX: s.tolerance for s in specs if s.tolerance >= 0}
    tolerances = {
        WER_SUFFIX: wer_tolerance,
        CHRF_SUFFIX: chrf_tolerance,
        ENGLISH_SUFFIX: english_tolerance,
    }
    bad = []
    for column, value in values.items():
        suffix = next((s for s in tolerances if column.endswith(s)), None)
        if column not in start or suffix is None:
            continue
        tol = own.get(column, tolerances[suffix])
        check = GuardCheck(column, float(start[column]), float(value), tol)
        if check.regressed:
            bad.append(check)
    return bad


def selection_score(select: str, wer: float, values: Mapping[str, float]) -> float:
    """What ``best/`` minimises (``TrainConfig.select``): the validation WER; with
    ``"validation+guards"`` the mean of it and every guard's WER column; with ``"guards"``
    the mean of the guards' WER columns alone (the validation WER when there are none)."""
    if select == "validation":
        return wer
    guards = [v for c, v in values.items() if c.endswith(WER_SUFFIX)]
    wers = guards if select == "guards" and guards else [wer, *guards]
    return sum(wers) / len(wers)


def english_share(texts: Sequence[str]) -> float:
    """Percent of ``texts`` that lingua detects as English rather than Swedish (an empty text
    is not English): whether a model still answers the translate task in English."""
    if not texts:
        return 100.0
    return 100.0 * sum(map(is_english, texts)) / len(texts)


def is_english(text: str) -> bool:
    """Whether lingua detects ``text`` as English rather than Swedish (empty: not English)."""
    from lingua import Language

    return bool(text.strip()) and _english_or_swedish().detect_language_of(text) == Language.ENGLISH


_DETECTOR: Any = None


def _english_or_swedish() -> Any:
    global _DETECTOR
    if _DETECTOR is None:
        from lingua import Language, LanguageDetectorBuilder

        _DETECTOR = LanguageDetectorBuilder.from_languages(
            Language.ENGLISH, Language.SWEDISH
        ).build()
    return _DETECTOR


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, character 6-grams) of ``hypotheses`` against ``references``.

    Two empty outputs agree (100); an empty and a non-empty one do not.
    """
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return 100.0
    pairs = [(h.strip(), r.strip()) for h, r in zip(hypotheses, references, strict=True)]
    both_empty = sum(1 for h, r in pairs if not h and not r)
    rest = [(h, r) for h, r in pairs if h or r]
    if not rest:
        return 100.0
    score = CHRF().corpus_score([h for h, _ in rest], [[r for _, r in rest]]).score
    # Empty-empty pairs count as full agreement, weighted by their share of the clips.
    return (score * len(rest) + 100.0 * both_empty) / len(pairs)


def manifest_key(tsv: Path, model: str) -> str:
    """Identity of a manifest's content: its text and every audio file's size and mtime."""
    from whisper_sv.data.sources.manifest import ManifestOptions, ManifestSource

    h = hashlib.sha256(file_digest(tsv).encode())
    h.update(model.encode())
    src = ManifestSource(str(tsv), ManifestOptions())
    for split in src.splits():
        for item in src.items(split):
            if isinstance(item.audio, str) and os.path.exists(item.audio):
                st = os.stat(item.audio)
                h.update(f"{item.audio}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_guard_store(
    spec: GuardSpec, *, model: str, cache_root: Path, processor: Any = None
) -> tuple[Any, str]:
    """The guard's (FeatureStore, split), building a store from a manifest when needed.

    A manifest's store goes to ``cache_root/guards/<name>-<content key>``: it is made once
    (the feature pipeline's own resume skips finished shards) and reused by later runs.
    """
    from whisper_sv.data.store import FeatureStore, StoreError

    path = Path(spec.path).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        store = FeatureStore(path)
        return store, _pick_split(store, spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"guard {spec.name!r}: {path} is neither a manifest TSV nor a feature store folder"
        )
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    out = cache_root / "guards" / f"{spec.name}-{manifest_key(path, model)}"
    # The store's manifest.json is written last: its presence means the store is complete,
    # and the key above changes with the manifest's text or any audio file.
    if not (out / "manifest.json").is_file():
        log.info("guard %s: computing features of %s into %s", spec.name, path, out)
        source = open_source(f"manifest:{path}", split="guard")
        options = BuildOptions(model=model, workers=1, progress=False)
        build_store(source, out, options, processor=processor)
    store = FeatureStore(out)
    if not store.splits() or store.num_rows(store.splits()[0]) == 0:
        raise StoreError(f"guard {spec.name!r}: no usable clip in {path} (see {out}/rejects.tsv)")
    return store, _pick_split(store, spec)


def _pick_split(store: Any, spec: GuardSpec) -> str:
    splits = store.splits()
    if spec.split:
        if spec.split not in splits:
            raise ValueError(
                f"guard {spec.name!r}: {spec.path} has no split {spec.split!r} "
                f"(it has {', '.join(splits)})"
            )
        return spec.split
    for name in ("test", "validation", "guard"):
        if name in splits:
            return name
    return splits[0]
