"""Does a word's probability say it is wrong? The threshold behind the app's underlined words.

Real Swedish phrases (../shared/data/lexin-phrases) transcribed with word timestamps (each
word's probability: the mean of its tokens'); a word is right when its normalised form is
one of its reference's words. Reports, for thresholds 0.3-0.7, the share of wrong words
under the threshold (doubt shown where it should be) and of right words under it (doubt
shown where it should not be), and the mean probability of each.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_doubt.py --limit 120``
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from whisper_sv.core.text import normalize
from whisper_sv.infer.transcriber import Transcriber

LEXIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lexin-phrases"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--limit", type=int, help="first N phrases (all: none)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads")
    args = parser.parse_args(argv)
    if not (LEXIN / "manifest.tsv").is_file():
        print(f"{LEXIN} not found", file=sys.stderr)
        return 2
    with open(LEXIN / "manifest.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))[: args.limit]
    t = Transcriber(args.model, device="cpu", cpu_threads=args.cpu_threads)
    right: list[float] = []
    wrong: list[float] = []
    for r in rows:
        said = set(normalize(r["sentence"]).split())
        result = t.transcribe(LEXIN / r["path"], word_timestamps=True)
        for w in (w for s in result.segments for w in s.words):
            word = normalize(w.text)
            if word:
                (right if word in said else wrong).append(w.probability)
    print(f"{len(rows)} phrases: {len(right)} right words, {len(wrong)} wrong words")
    print(
        f"mean probability: right {statistics.mean(right):.2f}, wrong {statistics.mean(wrong):.2f}"
    )
    print("| under | wrong words marked | right words marked |")
    print("|---|---|---|")
    for limit in (0.3, 0.4, 0.5, 0.6, 0.7):
        hit = sum(p < limit for p in wrong) / len(wrong)
        false = sum(p < limit for p in right) / len(right)
        print(f"| {limit:.1f} | {hit:.0%} | {false:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
