"""Subtitles a viewer can trust: cues that keep segments whole, words shown in their own
time, and the readability rules of ``subtitles.RULES``.

Two long real files joined from ../shared/data (``longform.join_clips``, 3 minutes each):
Common Voice sentences (cv-dev) with 0.3-1.0 s pauses, and lexin phrases with 0.6-1.5 s
pauses. Each is transcribed and translated with the default options, with and without word
timestamps, and laid out into cues as ``--format srt`` does (``subtitles.cues`` on the
segments and speech spans); with word timestamps also as ``--highlight-words`` does. Counted:

- ``split``: segments that would fit one cue (``subtitles.fits_one_cue``) but are shown in
  two or more; ``mixed``: cues holding words of two segments;
- ``outside``: words shown wholly outside the time their clip is spoken in the file, by more
  than 0.3 s, and the largest such distance. A hypothesis word's clip is the reference
  clip of the word it is aligned to (jiwer's alignment of the whole transcript with the
  whole reference), counted for the words read right only (``timed``: how many); a
  translation has no reference, so it is not counted;
- the cues breaking each readability rule (``RULES``);
- ``changed``: with word timestamps, transcript words that differ from the decoding
  without them (word timestamps must change only the times).

``--cache FILE`` keeps the decodings, so a change to the cue builder is measured on the
same segments.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_subtitles.py``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from whisper_sv.data.longform import join_clips
from whisper_sv.infer.subtitles import RULES, Cue, cues, fits_one_cue, highlighted, rule_breaks
from whisper_sv.infer.transcriber import Segment, Transcriber, Word

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {  # name: (set, pause range s)
    "cv-dev 3 min": ("cv-dev", (0.3, 1.0)),
    "lexin 3 min": ("lexin-phrases", (0.6, 1.5)),
}
OUTSIDE_S = 0.3  # a word shown this far outside its clip's time is counted


def decode(t: Transcriber, cache: Path | None) -> dict:
    """{file: {"reference": {...}, "<task>[+words]": {"segments", "speech"}}}, from
    ``cache`` where it has them."""
    stored = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (folder, pause) in FILES.items():
            manifest = DATA / folder / "manifest.tsv"
            if name in stored or not manifest.is_file():
                continue
            joined = join_clips(manifest, Path(tmp) / f"{folder}.wav", seconds=180, pause=pause)
            stored[name] = {
                "reference": {"sentences": joined.sentences, "spans": joined.spans},
            }
            for task in ("transcribe", "translate"):
                for words in (False, True):
                    result = t.transcribe(joined.path, task=task, word_timestamps=words)
                    stored[name][task + ("+words" if words else "")] = {
                        "segments": [dataclasses.asdict(s) for s in result.segments],
                        "speech": [list(s) for s in result.speech],
                    }
                    print(f"decoded {name} {task} words={words}", file=sys.stderr, flush=True)
    if cache:
        cache.write_text(json.dumps(stored))
    return stored


def _segment(d: dict) -> Segment:
    words = tuple(Word(**w) for w in d.get("words", ()))
    return Segment(**{**d, "words": words})


def _plain(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def own_times(hypothesis: Sequence[str], reference: dict) -> list[tuple[float, float] | None]:
    """Each hypothesis word's clip span (None for an inserted word)."""
    import jiwer

    ref_words, ref_span = [], []
    for text, span in zip(reference["sentences"], reference["spans"], strict=True):
        for w in text.split():
            if _plain(w):
                ref_words.append(_plain(w))
                ref_span.append(tuple(span))
    hyp_index = [i for i, w in enumerate(hypothesis) if _plain(w)]
    hyp_words = [_plain(hypothesis[i]) for i in hyp_index]
    out: list[tuple[float, float] | None] = [None] * len(hypothesis)  # None: not matched
    if not hyp_words:
        return out
    aligned = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    for chunk in aligned.alignments[0]:
        # Only words read right: a substitution's place in the alignment is one guess of
        # several when the words around it are wrong too.
        if chunk.type == "equal":
            for k in range(chunk.hyp_end_idx - chunk.hyp_start_idx):
                out[hyp_index[chunk.hyp_start_idx + k]] = ref_span[chunk.ref_start_idx + k]
    return out


def _away(cue: Cue, span: tuple[float, float] | None) -> float:
    """How far ``cue`` is from ``span`` (0: they overlap)."""
    if span is None:
        return 0.0
    return max(0.0, span[0] - cue.end, cue.start - span[1])


def measure(segments: list[Segment], speech, reference: dict | None, highlight: bool) -> dict:
    cue_list = cues(segments, spans=speech)
    owner = [k for k, s in enumerate(segments) for _ in s.text.split()]
    words = [w for s in segments for w in s.text.split()]
    shown = [w for c in cue_list for w in " ".join(c.lines).split()]
    assert shown == words, "the cues must show the segments' words, in order"
    cue_of: list[int] = [c for c, cue in enumerate(cue_list) for _ in " ".join(cue.lines).split()]
    seg_cues: dict[int, set[int]] = {}
    for k, c in zip(owner, cue_of, strict=True):
        seg_cues.setdefault(k, set()).add(c)
    split = sum(len(cs) > 1 and fits_one_cue(segments[k]) for k, cs in seg_cues.items())
    cue_segs: dict[int, set[int]] = {}
    for k, c in zip(owner, cue_of, strict=True):
        cue_segs.setdefault(c, set()).add(k)
    mixed = sum(len(ks) > 1 for ks in cue_segs.values())
    row = {"cues": len(cue_list), "split": split, "mixed": mixed, **rule_breaks(cue_list)}
    if reference is not None:
        spans = own_times(words, reference)
        if highlight:  # each word's own cue: the one that underlines it
            lit = [c for c in highlighted(cue_list) if "<u>" in " ".join(c.lines)]
            away = [_away(c, s) for c, s in zip(lit, spans, strict=True)]
        else:
            away = [_away(cue_list[c], s) for c, s in zip(cue_of, spans, strict=True)]
        row["timed"] = sum(s is not None for s in spans)
        row["outside"] = sum(a > OUTSIDE_S for a in away)
        row["farthest"] = round(max(away, default=0.0), 2)
    return row


def changed(plain: list[Segment], timed: list[Segment]) -> int:
    """Words of ``timed``'s text that differ from ``plain``'s (word-level edit count)."""
    import jiwer

    a = " ".join(s.text for s in plain).split()
    b = " ".join(s.text for s in timed).split()
    if not a or not b:
        return abs(len(a) - len(b))
    m = jiwer.process_words(" ".join(a), " ".join(b))
    return m.substitutions + m.deletions + m.insertions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--cache", type=Path, help="JSON file of decodings, read and extended")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads")
    parser.add_argument("--show", action="store_true", help="print the cues breaking a rule")
    args = parser.parse_args(argv)
    t = Transcriber(args.model, device="cpu", cpu_threads=args.cpu_threads)
    decoded = decode(t, args.cache)
    rules = list(RULES)
    head = ["file", "decoding", "cues", "split", "mixed", "timed", "outside", "farthest s", *rules]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(head) - 2))
    for name, runs in decoded.items():
        reference = runs["reference"]
        for key, d in runs.items():
            if key == "reference":
                continue
            segments = [_segment(s) for s in d["segments"]]
            speech = [tuple(s) for s in d["speech"]]
            ref = reference if key.startswith("transcribe") else None
            modes = [("", False)] + ([("+highlight", True)] if key.endswith("+words") else [])
            for suffix, highlight in modes:
                row = measure(segments, speech, ref, highlight)
                label = key + suffix
                # (The English is not compared: long-form windows that fail the loop guard's
                # rules are sampled again at higher temperatures, and CTranslate2's sampling
                # differs between calls of one process whatever the seed (its issue #1757).)
                if key == "transcribe+words" and not highlight:
                    plain = [_segment(s) for s in runs[key.removesuffix("+words")]["segments"]]
                    label += f" ({changed(plain, segments)} words changed)"
                cells = [
                    name,
                    label,
                    row["cues"],
                    row["split"],
                    row["mixed"],
                    row.get("timed", "-"),
                    row.get("outside", "-"),
                    row.get("farthest", "-"),
                ]
                cells += [f"{row[r]} ({row[r] / max(row['cues'], 1):.0%})" for r in rules]
                print("| " + " | ".join(str(c) for c in cells) + " |")
            if args.show:
                for c in cues(segments, spans=speech):
                    broken = [r for r, n in rule_breaks([c]).items() if n and r != "lone"]
                    print(f"    {c.start:7.2f} {c.end - c.start:5.2f}s {broken} {c.lines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
