"""Evaluation reports: a model on a manifest -> WER/CER, per-utterance table, speed.

A manifest is a tab-separated file with a header holding at least ``path`` and ``sentence``
(Common Voice's column names); paths are relative to the manifest's folder, any audio format.
Files that cannot be decoded are reported with the reason and left out of the rates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from whisper_sv import models
from whisper_sv.audio import AudioError
from whisper_sv.infer import TranscribeOptions, Transcriber, Transcript
from whisper_sv.text import ErrorRates, WordErrors, error_rates, word_errors

__all__ = [
    "ManifestRow",
    "Report",
    "Utterance",
    "evaluate",
    "read_manifest",
    "write_report",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "sentence")


@dataclass(frozen=True)
class ManifestRow:
    """One line of a manifest."""

    path: Path  # the audio file, made absolute against the manifest's folder
    sentence: str  # the reference transcript
    name: str  # the path as written in the manifest (for reports)


@dataclass(frozen=True)
class Utterance:
    """One evaluated file."""

    name: str  # the path as written in the manifest
    reference: str  # the manifest's sentence
    hypothesis: str  # the model's text ("" when failed)
    errors: WordErrors | None  # word edits after normalisation (None when failed)
    error: str = ""  # why the file was left out ("" when it was evaluated)


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
            f"{self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s: RTF {self.rtf:.3f}"
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
            "(`whisper_sv.text.normalize`). Orthographic: text as written.",
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
    from whisper_sv.sources._tsv import read_rows

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
        rows.append(ManifestRow(path=manifest.parent / name, sentence=sentence, name=name))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"manifest {manifest} has a header but no rows")
    return rows


def evaluate(
    manifest: str | os.PathLike,
    model: str = models.DEFAULT_MODEL,
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
    options = options or TranscribeOptions()
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
        utterances.append(Utterance(row.name, row.sentence, result.text, errors))
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
    )


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
