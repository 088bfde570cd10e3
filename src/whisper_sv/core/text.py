"""Swedish-safe text normalisation and word/character error rates.

Whisper's own ``EnglishTextNormalizer`` spells out English numbers and rewrites English
spellings, and its ``BasicTextNormalizer`` strips diacritics (``å`` -> ``a``), which merges
Swedish words that differ only there (``får``/``far``, ``hög``/``hog``). This normaliser only
does what is safe for Swedish:

- Unicode NFC, so ``a`` + combining ring and the precomposed ``å`` compare equal;
- lowercase (not ``casefold``, which would turn ``ß`` into ``ss``);
- punctuation and symbols become spaces; letters of every script and their diacritics stay
  (``å ä ö é ü``), so do digits. A hyphen splits words too (``e-post`` -> ``e post``) on
  both sides alike, so a compound is one error whichever way it is written in the reference;
- numbers stay as written: ``tre`` and ``3`` are different words. A ``.``, ``,`` or ``:``
  between two digits is part of the number, so the Swedish decimal comma survives
  (``3,5`` stays ``3,5``, ``10:30`` stays ``10:30``) while ``3, 5`` becomes ``3 5``.
  ``3,5`` and ``3.5`` stay different: a dot may be a Swedish thousands separator (``1.000``)
  and guessing would hide real errors;
- whitespace collapsed to single spaces, none at either end.

Error rates are corpus-level (total edits / total reference words or characters), in percent.

Three more named normalisers (``NORMALISERS``) make the figures comparable with published
ones: ``orthographic`` (text as written), ``whisper_basic`` (Whisper's ``BasicTextNormalizer``:
lowercase, bracketed text and symbols out, diacritics kept; the multilingual leaderboards'
choice) and ``kblab_swedish`` (KBLab's KB-Whisper evaluation style: lowercase, numbers written
out as Swedish words with ``num2words``, punctuation removed; see docs/benchmarks.md).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "NORMALISERS",
    "ErrorRates",
    "Score",
    "WordErrors",
    "cer",
    "error_rates",
    "error_types",
    "kblab_swedish",
    "normalize",
    "scores",
    "wer",
    "wer_change_interval",
    "whisper_basic",
    "word_errors",
]

# A separator with a digit on both sides belongs to the number ("3,5", "1.000", "10:30").
_NUMBER_SEPARATOR = re.compile(r"(?<=\d)[.,:](?=\d)")
_KEEP = "\x00"  # stands in for a protected separator while punctuation is removed
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, punctuation out, numbers as written, Swedish letters kept (see module doc)."""
    text = unicodedata.normalize("NFC", text).lower().replace(_KEEP, " ")
    protected: list[str] = []

    def protect(match: re.Match[str]) -> str:
        protected.append(match.group())
        return _KEEP

    text = _NUMBER_SEPARATOR.sub(protect, text)
    # Keep letters (L), combining marks that NFC could not fold (M), numbers (N) and the
    # placeholder; everything else (punctuation P, symbols S, controls C) becomes a space.
    text = "".join(
        ch if ch == _KEEP or unicodedata.category(ch)[0] in "LMN" else " " for ch in text
    )
    restored = iter(protected)
    text = re.sub(_KEEP, lambda _: next(restored), text)
    return _WHITESPACE.sub(" ", text).strip()


def _orthographic(text: str) -> str:
    """As written, only whitespace collapsed (case and punctuation count as errors)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


_NUMBER = re.compile(r"\d+(?:,\d+)?")


def _number_words(match: re.Match[str]) -> str:
    """A number as Swedish words: "21" -> "tjugoett", "3,5" -> "tre komma fem"."""
    from num2words import num2words

    whole, _, decimals = match.group().partition(",")
    words = num2words(int(whole), lang="sv")
    if decimals:
        # Read digit by digit after a leading zero ("0,05" -> "noll komma noll fem").
        tail = [num2words(int(d), lang="sv") for d in decimals] if decimals[0] == "0" else []
        words += " komma " + (" ".join(tail) or num2words(int(decimals), lang="sv"))
    return f" {words} "


def kblab_swedish(text: str) -> str:
    """KBLab-style Swedish normalisation: lowercase, numbers as Swedish words, no punctuation.

    ``3`` -> ``tre``, ``1999`` -> ``etttusen niohundranittionio`` (num2words' spelling),
    ``3,5`` -> ``tre komma fem``; a thousands separator ``1 000`` reads as two numbers, as a
    text normaliser cannot tell it from a list. Letters with diacritics stay.
    """
    text = unicodedata.normalize("NFC", text).lower()
    text = _NUMBER.sub(_number_words, text)
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return _WHITESPACE.sub(" ", text).strip()


def whisper_basic(text: str) -> str:
    """Whisper's ``BasicTextNormalizer`` (diacritics kept), as the multilingual leaderboards use."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()(text).strip()


# The named normalisers of evaluation reports, in report order.
NORMALISERS: dict[str, Callable[[str], str]] = {
    "orthographic": lambda text: _orthographic(text),
    "whisper_basic": whisper_basic,
    "kblab_swedish": kblab_swedish,
}


@dataclass(frozen=True)
class Score:
    """WER and CER under one normaliser."""

    wer: float  # word error rate, percent
    cer: float  # character error rate, percent


def scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Score]:
    """Corpus WER/CER under each of ``NORMALISERS`` (name -> Score)."""
    refs, hyps = _check(references, hypotheses)
    out = {}
    for name, clean in NORMALISERS.items():
        r, h = [clean(x) for x in refs], [clean(x) for x in hyps]
        out[name] = Score(wer=_wer(r, h), cer=_cer(r, h))
    return out


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error rates of a set of hypotheses against their references."""

    wer: float  # word error rate, percent, after normalize() on both sides
    cer: float  # character error rate, percent, after normalize()
    wer_orthographic: float  # word error rate, percent, text as written (case, punctuation)
    cer_orthographic: float  # character error rate, percent, text as written
    n: int  # number of reference/hypothesis pairs


@dataclass(frozen=True)
class WordErrors:
    """Word edit counts of one hypothesis against its reference."""

    substitutions: int  # reference words replaced by another word
    deletions: int  # reference words missing from the hypothesis
    insertions: int  # hypothesis words with no reference word
    reference_words: int  # words in the reference

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def hypothesis_words(self) -> int:
        return self.reference_words - self.deletions + self.insertions

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )

    def shares(self) -> dict[str, float]:
        """Substitutions, deletions and insertions as percent of the reference words (they add
        up to the WER), and the hypothesis length as percent of the reference's: under 100
        means words are left out (early stops), over 100 that words are invented."""
        n = max(self.reference_words, 1)
        return {
            "substitutions": 100.0 * self.substitutions / n,
            "deletions": 100.0 * self.deletions / n,
            "insertions": 100.0 * self.insertions / n,
            "length": 100.0 * self.hypothesis_words / n,
        }


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise ValueError("pass lists of strings (one per utterance), not a single string")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: pass one "
            "hypothesis per reference"
        )
    return references, hypotheses


def _rate(edits: int, reference_units: int) -> float:
    # With no reference words at all, any output is wholly wrong and none is wholly right.
    if reference_units == 0:
        return 0.0 if edits == 0 else 100.0
    return 100.0 * edits / reference_units


def _wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    if not references:
        return 0.0
    out = jiwer.process_words(references, hypotheses)
    edits = out.substitutions + out.deletions + out.insertions
    return _rate(edits, out.substitutions + out.deletions + out.hits)


def _cer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    if not references:
        return 0.0
    out = jiwer.process_characters(references, hypotheses)
    edits = out.substitutions + out.deletions + out.insertions
    return _rate(edits, out.substitutions + out.deletions + out.hits)


def wer(references: Sequence[str], hypotheses: Sequence[str], *, normalized: bool = True) -> float:
    """Word error rate in percent; ``normalized`` applies normalize() to both sides first."""
    refs, hyps = _check(references, hypotheses)
    clean = normalize if normalized else _orthographic
    return _wer([clean(r) for r in refs], [clean(h) for h in hyps])


def cer(references: Sequence[str], hypotheses: Sequence[str], *, normalized: bool = True) -> float:
    """Character error rate in percent (spaces count); ``normalized`` as in wer()."""
    refs, hyps = _check(references, hypotheses)
    clean = normalize if normalized else _orthographic
    return _cer([clean(r) for r in refs], [clean(h) for h in hyps])


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
    """All four rates (normalised and orthographic WER and CER) in one pass."""
    refs, hyps = _check(references, hypotheses)
    norm_refs, norm_hyps = [normalize(r) for r in refs], [normalize(h) for h in hyps]
    orth_refs, orth_hyps = [_orthographic(r) for r in refs], [_orthographic(h) for h in hyps]
    return ErrorRates(
        wer=_wer(norm_refs, norm_hyps),
        cer=_cer(norm_refs, norm_hyps),
        wer_orthographic=_wer(orth_refs, orth_hyps),
        cer_orthographic=_cer(orth_refs, orth_hyps),
        n=len(refs),
    )


def word_errors(reference: str, hypothesis: str, *, normalized: bool = True) -> WordErrors:
    """Substitutions, deletions and insertions of one utterance (for per-utterance tables)."""
    import jiwer

    clean = normalize if normalized else _orthographic
    out = jiwer.process_words([clean(reference)], [clean(hypothesis)])
    return WordErrors(
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        reference_words=out.substitutions + out.deletions + out.hits,
    )


def error_types(references: Sequence[str], hypotheses: Sequence[str]) -> WordErrors:
    """Word edit counts of a whole set (normalised text), summed over its utterances."""
    refs, hyps = _check(references, hypotheses)
    total = WordErrors(0, 0, 0, 0)
    for r, h in zip(refs, hyps, strict=True):
        total = total + word_errors(r, h)
    return total


def wer_change_interval(
    references: Sequence[str],
    before: Sequence[str],
    after: Sequence[str],
    *,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """The ``confidence`` interval of WER(after) - WER(before), in points, by the paired
    bootstrap over utterances (Bisani & Ney 2004): both systems are scored on the same
    resampled sets, so a change within the interval is within what another draw of the same
    kind of clips could give. Small real sets (54 single words) move by whole words."""
    import numpy as np

    refs, hyps_b = _check(references, before)
    _, hyps_a = _check(references, after)
    if len(hyps_a) != len(refs):
        raise ValueError(f"{len(hyps_a)} hypotheses after for {len(refs)} references")
    if not refs:
        return (0.0, 0.0)
    counts = [word_errors(r, h) for r, h in zip(refs, hyps_b, strict=True)]
    err_b = np.array([c.errors for c in counts], dtype=np.float64)
    words = np.array([c.reference_words for c in counts], dtype=np.float64)
    err_a = np.array([word_errors(r, h).errors for r, h in zip(refs, hyps_a, strict=True)])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(refs), size=(samples, len(refs)))
    diff = 100.0 * (err_a[idx].sum(1) - err_b[idx].sum(1)) / np.maximum(words[idx].sum(1), 1)
    tail = 100.0 * (1.0 - confidence) / 2
    lo, hi = np.percentile(diff, [tail, 100.0 - tail])
    return (float(lo), float(hi))


# OpenAI's loop rule on text (whisper's and faster-whisper's compression_ratio_threshold):
# zlib compresses a loop far better than speech. One definition for the decoder's loop guard
# and the training guards.
def sentence_case(text: str) -> str:
    """``text`` as Whisper writes a sentence when it is written in lowercase without
    punctuation ("tvättar håret" -> "Tvättar håret."); any other text as it is."""
    t = text.strip()
    if not t or t != t.lower() or any(not (c.isalnum() or c.isspace()) for c in t):
        return t
    return t[0].upper() + t[1:] + "."


COMPRESSION_RATIO_THRESHOLD = 2.4


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes (OpenAI's loop measure; > 2.4 loops)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0
