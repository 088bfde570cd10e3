"""Evaluation reports: a model on a manifest -> WER/CER, per-utterance table, speed.

A manifest is a tab-separated file with a header holding at least ``path`` and ``sentence``
(Common Voice's column names); paths are relative to the manifest's folder, any audio format.
Files that cannot be decoded are reported with the reason and left out of the rates. A
``client_id`` column (Common Voice's speaker id) adds a per-speaker table.

Rates are given under the project's Swedish-safe normaliser (``wer``/``cer``) and under the
three named normalisers of ``whisper_sv.core.text.NORMALISERS``: ``orthographic``,
``whisper_basic`` and ``kblab_swedish``, the one to set beside KBLab's published Swedish
WERs (docs/benchmarks.md says which figure compares with which). A file longer than 30 s is
scored whole, decoded window after window (``vad=False`` unless the options say otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from whisper_sv.core.audio import AudioError
from whisper_sv.core.text import ErrorRates, Score, WordErrors, error_rates, scores, word_errors
from whisper_sv.infer.transcriber import TranscribeOptions, Transcriber, Transcript
from whisper_sv.models.references import DEFAULT_MODEL

__all__ = [
    "ManifestRow",
    "Report",
    "SpeakerScore",
    "Utterance",
    "evaluate",
    "read_manifest",
    "write_report",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "sentence")
SPEAKER_COLUMN = "client_id"


@dataclass(frozen=True)
class ManifestRow:
    """One line of a manifest."""

    path: Path  # the audio file, made absolute against the manifest's folder
    sentence: str  # the reference transcript
    name: str  # the path as written in the manifest (for reports)
    speaker: str = ""  # the client_id column ("" when the manifest has none)


@dataclass(frozen=True)
class Utterance:
    """One evaluated file."""

    name: str  # the path as written in the manifest
    reference: str  # the manifest's sentence
    hypothesis: str  # the model's text ("" when failed)
    errors: WordErrors | None  # word edits after normalisation (None when failed)
    error: str = ""  # why the file was left out ("" when it was evaluated)
    speaker: str = ""  # the manifest's client_id ("" when none)


@dataclass(frozen=True)
class SpeakerScore:
    """One speaker's rates (kblab_swedish normaliser)."""

    speaker: str  # the manifest's client_id
    n: int  # utterances scored
    wer: float  # percent
    cer: float  # percent


@dataclass(frozen=True)
class Report:
    """The result of one evaluation."""

    model: str  # the model reference as given
    backend: str  # "ct2" or "transformers"
    manifest: str  # the manifest file
    rates: ErrorRates  # over the files that decoded
    n_failed: int  # files left out (see utterances' error)
    seconds: float  # wall time spent transcribing (model loading excluded)
    audio_seconds: float  # length of the audio transcribed
    utterances: tuple[Utterance, ...]  # in manifest order, failed ones included
    options: TranscribeOptions  # decoding options used
    scores: dict[str, Score] | None = None  # WER/CER per named normaliser (text.NORMALISERS)
    speakers: tuple[SpeakerScore, ...] = ()  # per speaker, when the manifest has client_id

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of compute per second of audio (lower is faster)."""
        return self.seconds / self.audio_seconds if self.audio_seconds else 0.0

    def to_dict(self) -> dict:
        """What report.json holds."""
        r = self.rates
        return {
            "wer": round(r.wer, 2),
            "cer": round(r.cer, 2),
            "wer_orthographic": round(r.wer_orthographic, 2),
            "cer_orthographic": round(r.cer_orthographic, 2),
            "normalisers": {
                name: {"wer": round(sc.wer, 2), "cer": round(sc.cer, 2)}
                for name, sc in (self.scores or {}).items()
            },
            "speakers": [asdict(sp) for sp in self.speakers],
            "n": r.n,
            "n_failed": self.n_failed,
            "model": self.model,
            "backend": self.backend,
            "manifest": self.manifest,
            "seconds": round(self.seconds, 3),
            "audio_seconds": round(self.audio_seconds, 3),
            "rtf": round(self.rtf, 4),
            "options": asdict(self.options),
            "failed": [{"path": u.name, "reason": u.error} for u in self.utterances if u.error],
            "utterances": [
                {
                    "path": u.name,
                    "reference": u.reference,
                    "hypothesis": u.hypothesis,
                    "errors": u.errors.errors if u.errors else None,
                }
                for u in self.utterances
                if not u.error
            ],
        }

    def summary(self) -> str:
        """Two lines for the terminal."""
        r = self.rates
        failed = f", {self.n_failed} failed" if self.n_failed else ""
        return (
            f"{self.model} ({self.backend}) on {r.n} utterances{failed}: "
            f"WER {r.wer:.1f}%  CER {r.cer:.1f}%  "
            f"(orthographic WER {r.wer_orthographic:.1f}%  CER {r.cer_orthographic:.1f}%)\n"
            + "".join(
                f"{name}: WER {sc.wer:.1f}%  CER {sc.cer:.1f}%\n"
                for name, sc in (self.scores or {}).items()
            )
            + f"{self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s: RTF {self.rtf:.3f}"
        )

    def to_markdown(self) -> str:
        """report.md: summary table, failures, per-utterance table."""
        r = self.rates
        lines = [
            f"# Evaluation of `{self.model}`",
            "",
            f"Manifest: `{self.manifest}`; backend: {self.backend}; "
            f"beam size {self.options.beam_size}; language {self.options.language}; "
            f"task {self.options.task}.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| WER (normalised) | {r.wer:.2f} % |",
            f"| CER (normalised) | {r.cer:.2f} % |",
            f"| WER (orthographic) | {r.wer_orthographic:.2f} % |",
            f"| CER (orthographic) | {r.cer_orthographic:.2f} % |",
            f"| utterances | {r.n} |",
            f"| failed | {self.n_failed} |",
            f"| audio | {self.audio_seconds:.1f} s |",
            f"| transcription time | {self.seconds:.1f} s |",
            f"| real-time factor | {self.rtf:.3f} |",
            "",
            "Normalised: lowercase, punctuation removed, numbers as written, å ä ö é kept "
            "(`whisper_sv.core.text.normalize`). Orthographic: text as written.",
        ]
        if self.scores:
            lines += [
                "",
                "## Named normalisers",
                "",
                "| normaliser | WER | CER |",
                "|---|---|---|",
            ]
            lines += [
                f"| {name} | {sc.wer:.2f} % | {sc.cer:.2f} % |" for name, sc in self.scores.items()
            ]
            lines += ["", _COMPARISON]
        if self.speakers:
            lines += [
                "",
                "## Speakers",
                "",
                "kblab_swedish normaliser.",
                "",
                "| speaker | utterances | WER | CER |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {_cell(sp.speaker)} | {sp.n} | {sp.wer:.2f} % | {sp.cer:.2f} % |"
                for sp in self.speakers
            ]
        failed = [u for u in self.utterances if u.error]
        if failed:
            lines += ["", "## Failed files", "", "| file | reason |", "|---|---|"]
            lines += [f"| {_cell(u.name)} | {_cell(u.error)} |" for u in failed]
        lines += [
            "",
            "## Utterances",
            "",
            "Errors: word substitutions + deletions + insertions after normalisation, "
            "out of the reference's words.",
            "",
            "| # | file | reference | hypothesis | errors |",
            "|---|---|---|---|---|",
        ]
        for i, u in enumerate(self.utterances, start=1):
            if u.error:
                continue
            e = u.errors
            errs = f"{e.errors}/{e.reference_words}" if e else ""
            lines.append(
                f"| {i} | {_cell(u.name)} | {_cell(u.reference)} | {_cell(u.hypothesis)} | {errs} |"
            )
        return "\n".join(lines) + "\n"


_COMPARISON = (
    "`kblab_swedish` (lowercase, numbers as Swedish words with num2words, punctuation "
    "removed) is the figure to set beside KBLab's published WERs (KB-Whisper base 8.7, OpenAI "
    "Whisper base 52.1 on Common Voice sv-SE test); `whisper_basic` beside leaderboards that "
    "use Whisper's BasicTextNormalizer; `orthographic` counts case and punctuation."
)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def read_manifest(path: str | os.PathLike, *, limit: int | None = None) -> list[ManifestRow]:
    """The rows of a manifest TSV (header with ``path`` and ``sentence``; other columns ignored).

    Quotes are not special (Common Voice sentences contain them). Raises ValueError for a
    missing file, missing columns or no rows.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise ValueError(f"manifest not found: {manifest}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, not {limit}")
    from whisper_sv.data.sources._tsv import read_rows

    columns, records = read_rows(manifest)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        found = ", ".join(repr(c) for c in columns) or "nothing"
        raise ValueError(
            f"manifest {manifest} lacks the column(s) {', '.join(missing)} (found {found}); "
            "its first line must be a tab-separated header with 'path' and 'sentence'"
        )
    rows = []
    for record in records:
        name = (record.fields.get("path") or "").strip()
        if not name:
            continue
        sentence = (record.fields.get("sentence") or "").strip()
        speaker = (record.fields.get(SPEAKER_COLUMN) or "").strip()
        rows.append(
            ManifestRow(path=manifest.parent / name, sentence=sentence, name=name, speaker=speaker)
        )
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"manifest {manifest} has a header but no rows")
    return rows


def evaluate(
    manifest: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    *,
    backend: str = "ct2",
    options: TranscribeOptions | None = None,
    limit: int | None = None,
    transcriber: Transcriber | None = None,
    progress: bool = False,
) -> Report:
    """Transcribe every file of ``manifest`` and score it against its sentence.

    ``transcriber``: an already loaded one (then ``model``/``backend`` are taken from it).
    Files that fail to decode, and rows with an empty sentence, are reported and skipped.
    """
    rows = read_manifest(manifest, limit=limit)
    options = options or TranscribeOptions(vad=False)
    if transcriber is None:
        transcriber = Transcriber(model, backend=backend)  # type: ignore[arg-type]
    start = time.perf_counter()
    usable = [r for r in rows if r.sentence]
    results = iter(
        transcriber.transcribe_many([r.path for r in usable], options, progress=progress)
    )
    seconds = time.perf_counter() - start

    utterances: list[Utterance] = []
    audio_seconds = 0.0
    for row in rows:
        if not row.sentence:
            utterances.append(Utterance(row.name, "", "", None, error="empty sentence in manifest"))
            continue
        result = next(results)
        if isinstance(result, AudioError):
            utterances.append(Utterance(row.name, row.sentence, "", None, error=result.reason))
            continue
        assert isinstance(result, Transcript)
        audio_seconds += result.duration
        errors = word_errors(row.sentence, result.text)
        utterances.append(
            Utterance(row.name, row.sentence, result.text, errors, speaker=row.speaker)
        )
    for u in utterances:
        if u.error:
            log.debug("skipped %s: %s", u.name, u.error)

    scored = [u for u in utterances if not u.error]
    rates = error_rates([u.reference for u in scored], [u.hypothesis for u in scored])
    return Report(
        model=transcriber.model,
        backend=transcriber.backend,
        manifest=str(manifest),
        rates=rates,
        n_failed=len(utterances) - len(scored),
        seconds=seconds,
        audio_seconds=audio_seconds,
        utterances=tuple(utterances),
        options=options,
        scores=scores([u.reference for u in scored], [u.hypothesis for u in scored]),
        speakers=_speakers(scored),
    )


def _speakers(scored: list[Utterance]) -> tuple[SpeakerScore, ...]:
    """Per-speaker rates under kblab_swedish, most utterances first (none without client_id)."""
    groups: dict[str, list[Utterance]] = {}
    for u in scored:
        if u.speaker:
            groups.setdefault(u.speaker, []).append(u)
    out = []
    for speaker, group in groups.items():
        sc = scores([u.reference for u in group], [u.hypothesis for u in group])["kblab_swedish"]
        out.append(SpeakerScore(speaker, len(group), sc.wer, sc.cer))
    return tuple(sorted(out, key=lambda sp: (-sp.n, sp.speaker)))


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` and ``out_dir/report.md``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(
        json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    md_path.write_text(report.to_markdown(), encoding="utf-8")
    return json_path, md_path
