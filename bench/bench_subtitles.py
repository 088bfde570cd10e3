"""Readable subtitles: the share of cues breaking each rule of ``subtitles.RULES``.

Two long real files joined from ../shared/data (``longform.join_clips``, 3 minutes each):
Common Voice sentences (cv-dev) with 0.3-1.0 s pauses, and lexin phrases with 0.6-1.5 s
pauses. Each is transcribed and translated with the default options; the cues of both
(``subtitles.cues`` on the segments and speech spans, as ``--format srt`` makes them) are
checked against the rules. ``--cache FILE`` keeps the decodings, so a change to the cue
builder is measured on the same segments.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_subtitles.py``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from whisper_sv.data.longform import join_clips
from whisper_sv.infer.subtitles import RULES, cues, rule_breaks
from whisper_sv.infer.transcriber import Segment, Transcriber, Word

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {  # name: (set, pause range s)
    "cv-dev 3 min": ("cv-dev", (0.3, 1.0)),
    "lexin 3 min": ("lexin-phrases", (0.6, 1.5)),
}


def decode(t: Transcriber, cache: Path | None) -> dict:
    """{file: {task: {"segments": [...], "speech": [...]}}}, from ``cache`` where it has them."""
    stored = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (folder, pause) in FILES.items():
            manifest = DATA / folder / "manifest.tsv"
            if name in stored or not manifest.is_file():
                continue
            joined = join_clips(manifest, Path(tmp) / f"{folder}.wav", seconds=180, pause=pause)
            stored[name] = {}
            for task in ("transcribe", "translate"):
                result = t.transcribe(joined.path, task=task)
                stored[name][task] = {
                    "segments": [dataclasses.asdict(s) for s in result.segments],
                    "speech": [list(s) for s in result.speech],
                }
    if cache:
        cache.write_text(json.dumps(stored))
    return stored


def _segment(d: dict) -> Segment:
    words = tuple(Word(**w) for w in d.get("words", ()))
    return Segment(**{**d, "words": words})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--cache", type=Path, help="JSON file of decodings, read and extended")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads")
    parser.add_argument("--show", action="store_true", help="print the cues breaking a rule")
    args = parser.parse_args(argv)
    t = Transcriber(args.model, device="cpu", cpu_threads=args.cpu_threads)
    decoded = decode(t, args.cache)
    print("| file | task | cues | " + " | ".join(RULES) + " |")
    print("|---|---|---|" + "---|" * len(RULES))
    for name, tasks in decoded.items():
        for task, d in tasks.items():
            cue_list = cues(
                [_segment(s) for s in d["segments"]], spans=[tuple(s) for s in d["speech"]]
            )
            breaks = rule_breaks(cue_list)
            shares = " | ".join(
                f"{breaks[r]} ({breaks[r] / max(len(cue_list), 1):.0%})" for r in RULES
            )
            print(f"| {name} | {task} | {len(cue_list)} | {shares} |")
            if args.show:
                for c in cue_list:
                    broken = [r for r, n in rule_breaks([c]).items() if n and r != "lone"]
                    print(f"    {c.start:7.2f} {c.end - c.start:5.2f}s {broken} {c.lines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
