"""Hallucination benchmark: text written for audio that does not say it, and words lost.

Sets: generated non-speech (``whisper_sv.data.nonspeech``: silence, noises, fan and room noise,
hum, tones, chords, clicks, music-like audio, very quiet noise), real Swedish speech from
../shared/data (lexin-phrases, sv-words) and long files joined from lexin phrases
(``longform.join_clips``: with 0.6-1.5 s pauses and with pauses of at most 0.2 s). Every
clip is transcribed and translated; for each configuration of the speech guard the table
gives, per set and task:

- ``text``: outputs holding any text (on non-speech every one is invented);
- ``known``: outputs holding a phrase of ``hallucinations.txt`` (outros, subtitle credits, URLs);
- ``long``: English more than 2x its configuration's transcript + 10 characters (translate);
- ``WER``: normalised word error rate of the transcripts of real speech (``text.error_rates``);
- ``dropped``: outputs from which the guard dropped something.

Clips of up to 30 s are decoded once per task with the guard off and judged by the guard's
own functions (``speech_guard.judge``; decoding of a short clip does not depend on the
guard's options), so every configuration costs no more decoding; ``--check N`` decodes the
first N of each set again through ``Transcriber`` with the chosen defaults and reports any
difference. Longer audio is decoded per configuration (faster-whisper's loop skips windows
by the no-speech rule itself). ``--cache FILE`` keeps the decodings for the next run.

Run (all of it, about 35 min on one busy core):
``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_hallucination.py``
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_sv.core.audio import N_SAMPLES, SAMPLE_RATE, load_audio
from whisper_sv.core.text import error_rates
from whisper_sv.data.nonspeech import nonspeech_set
from whisper_sv.infer.hallucination import judge, judge_translation, known_hallucination
from whisper_sv.infer.transcriber import Segment, TranscribeOptions, Transcriber

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Today's decoding before the speech guard: OpenAI's no-speech rule on short clips only.
BASELINE = {
    "speech_gate": False,
    "no_speech_threshold": 0.6,
    "log_prob_threshold": -1.0,
    "drop_known_hallucinations": False,
    "check_translation": False,
}
# Each defence alone on top of the baseline; "chosen" is TranscribeOptions() as it is now.
CONFIGS: dict[str, dict] = {
    "baseline": BASELINE,
    "speech gate (VAD)": {**BASELINE, "speech_gate": True},
    "no-speech > 0.4": {**BASELINE, "no_speech_threshold": 0.4},
    "no-speech, log-prob < -0.6": {**BASELINE, "log_prob_threshold": -0.6},
    "known phrases": {**BASELINE, "drop_known_hallucinations": True},
    "translation check": {**BASELINE, "check_translation": True},
    "chosen (defaults)": {},
}
# Guard off: nothing dropped, so that every configuration can be judged from one decoding.
RAW = {**BASELINE, "no_speech_threshold": 1.0}
LONG_RATIO, LONG_SLACK = 2.0, 10  # the "long" column: English over 2x transcript + 10 chars


@dataclass
class Item:
    """One clip of one set."""

    set: str
    name: str
    audio: np.ndarray
    reference: str | None  # None: non-speech


@dataclass
class Outcome:
    """What one configuration kept of one item."""

    sv: list[Segment]
    en: list[Segment]
    sv_dropped: int
    en_dropped: int


def load_sets(limit: int | None, work: Path) -> list[Item]:
    from whisper_sv.data.longform import join_clips

    items = [Item("non-speech", c.name, c.samples, None) for c in nonspeech_set()]
    for name in ("lexin-phrases", "sv-words"):
        manifest = DATA / name / "manifest.tsv"
        if not manifest.is_file():
            print(f"{manifest} not found: {name} left out", file=sys.stderr)
            continue
        with open(manifest, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))[:limit]
        for r in rows:
            items.append(Item(name, r["path"], load_audio(DATA / name / r["path"]), r["sentence"]))
    lexin = DATA / "lexin-phrases" / "manifest.tsv"
    if lexin.is_file():
        for label, pause in (("pauses", (0.6, 1.5)), ("no pauses", (0.0, 0.2))):
            joined = join_clips(lexin, work / f"long-{pause[0]}.wav", seconds=180, pause=pause)
            items.append(
                Item("long-form", label, load_audio(joined.path), joined.reference.strip())
            )
    return items


# --------------------------------------------------------------------------- decoding


def _segment(d: dict) -> Segment:
    return Segment(**{k: v for k, v in d.items() if k != "words"})


def raw_decodings(
    t: Transcriber, items: list[Item], cache: Path | None
) -> dict[str, tuple[list[Segment], list[Segment], tuple]]:
    """{set/name: (transcript segments, English segments, speech spans)} of the short items,
    decoded with the guard off (RAW), from ``cache`` where it has them."""
    stored = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    out = {}
    started = time.perf_counter()
    short = [i for i in items if len(i.audio) <= N_SAMPLES]
    for n, item in enumerate(short, 1):
        key = f"{item.set}/{item.name}"
        if key not in stored:
            sv = t.transcribe(item.audio, **RAW)
            en = t.transcribe(item.audio, **RAW, task="translate")
            stored[key] = {
                "sv": [dataclasses.asdict(s) for s in sv.segments],
                "en": [dataclasses.asdict(s) for s in en.segments],
                "speech": [list(s) for s in sv.speech],
            }
            if n % 25 == 0:
                rate = (time.perf_counter() - started) / n
                print(f"  decoded {n}/{len(short)} ({rate:.1f} s a clip)", file=sys.stderr)
                if cache:
                    cache.write_text(json.dumps(stored))
        d = stored[key]
        spans = tuple(tuple(s) for s in d["speech"])
        out[key] = ([_segment(s) for s in d["sv"]], [_segment(s) for s in d["en"]], spans)
    if cache:
        cache.write_text(json.dumps(stored))
    return out


def judged(sv: list[Segment], en: list[Segment], spans, opts: TranscribeOptions) -> Outcome:
    """What ``opts``' guard keeps of one raw decoding (as Transcriber would)."""
    sv_dropped: list = []
    en_dropped: list = []
    gate_spans = spans if (opts.fit_to_speech or opts.speech_gate) else None
    kept_sv = list(judge(sv, opts, gate_spans, sv_dropped))
    kept_en = judge(en, opts, gate_spans, en_dropped)
    if opts.check_translation:
        kept_en = judge_translation(kept_en, kept_sv, opts, en_dropped) if kept_sv else iter(())
    return Outcome(kept_sv, list(kept_en), len(sv_dropped), len(en_dropped))


def decoded(t: Transcriber, item: Item, opts: TranscribeOptions) -> Outcome:
    """What Transcriber gives for one item with ``opts`` (long audio; --check)."""
    sv = t.transcribe(item.audio, dataclasses.replace(opts, task="transcribe"))
    en = t.transcribe(item.audio, dataclasses.replace(opts, task="translate"))
    return Outcome(list(sv.segments), list(en.segments), len(sv.dropped), len(en.dropped))


# --------------------------------------------------------------------------- scoring


def _text(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text).strip()


def row(config: str, set_name: str, items: list[Item], outcomes: list[Outcome]) -> list[dict]:
    rows = []
    for task in ("transcribe", "translate"):
        texts = [_text(o.sv if task == "transcribe" else o.en) for o in outcomes]
        long = sum(len(_text(o.en)) > LONG_RATIO * len(_text(o.sv)) + LONG_SLACK for o in outcomes)
        wer = None
        if task == "transcribe" and items[0].reference is not None:
            wer = error_rates([i.reference for i in items], texts).wer
        rows.append(
            {
                "config": config,
                "set": set_name,
                "task": task,
                "n": len(items),
                "text": sum(bool(x) for x in texts),
                "known": sum(known_hallucination(x) is not None for x in texts),
                "long": long if task == "translate" else None,
                "wer": wer,
                "dropped": sum(
                    bool(o.sv_dropped if task == "transcribe" else o.en_dropped) for o in outcomes
                ),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| configuration | set | task | n | text | known | long | WER | dropped |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = f"{r['wer']:.1f}" if r["wer"] is not None else ""
        long = "" if r["long"] is None else str(r["long"])
        lines.append(
            f"| {r['config']} | {r['set']} | {r['task']} | {r['n']} | {r['text']} | "
            f"{r['known']} | {long} | {wer} | {r['dropped']} |"
        )
    return "\n".join(lines) + "\n"


def examples(items: list[Item], outcomes: list[Outcome], pick: Callable[[str], bool]) -> list:
    """(set/name, task, text) of outputs whose text ``pick`` selects."""
    out = []
    for item, o in zip(items, outcomes, strict=True):
        for task, segs in (("transcribe", o.sv), ("translate", o.en)):
            if pick(_text(segs)):
                out.append((f"{item.set}/{item.name}", task, _text(segs)))
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--limit", type=int, help="first N clips of each real set (all: none)")
    parser.add_argument("--configs", help="comma-separated names of CONFIGS (default: all)")
    parser.add_argument("--cache", type=Path, help="JSON file of decodings, read and extended")
    parser.add_argument("--check", type=int, default=0, help="clips a set decoded again")
    parser.add_argument("--no-long", action="store_true", help="leave out audio over 30 s")
    parser.add_argument("--md", type=Path, help="write the table here (markdown)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads")
    args = parser.parse_args(argv)
    names = args.configs.split(",") if args.configs else list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        print(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}", file=sys.stderr)
        return 2

    t = Transcriber(args.model, device="cpu", cpu_threads=args.cpu_threads)
    with tempfile.TemporaryDirectory() as tmp:
        items = load_sets(args.limit, Path(tmp))
    if args.no_long:
        items = [i for i in items if len(i.audio) <= N_SAMPLES]
    seconds = sum(len(i.audio) for i in items) / SAMPLE_RATE
    print(f"{len(items)} clips, {seconds / 60:.1f} min of audio; model {args.model}")
    raw = raw_decodings(t, items, args.cache)

    rows: list[dict] = []
    for config in names:
        opts = TranscribeOptions(**CONFIGS[config])
        by_set: dict[str, tuple[list[Item], list[Outcome]]] = {}
        for item in items:
            key = f"{item.set}/{item.name}"
            outcome = judged(*raw[key], opts) if key in raw else decoded(t, item, opts)
            group = by_set.setdefault(item.set, ([], []))
            group[0].append(item)
            group[1].append(outcome)
        for set_name, (set_items, outcomes) in by_set.items():
            rows += row(config, set_name, set_items, outcomes)
            if config in ("baseline", "chosen (defaults)"):
                for ex in examples(set_items, outcomes, lambda x: known_hallucination(x)):
                    print(f"  {config}: known hallucination {ex}")
                if set_name == "non-speech":
                    for ex in examples(set_items, outcomes, bool):
                        print(f"  {config}: text on non-speech {ex}")
    table = markdown(rows)
    print(table)
    if args.md:
        args.md.write_text(table, encoding="utf-8")

    if args.check:
        opts = TranscribeOptions()
        mismatches = 0
        for set_name in dict.fromkeys(i.set for i in items):
            for item in [i for i in items if i.set == set_name][: args.check]:
                key = f"{item.set}/{item.name}"
                if key not in raw:
                    continue
                want, got = judged(*raw[key], opts), decoded(t, item, opts)
                for a, b in ((want.sv, got.sv), (want.en, got.en)):
                    if _text(a) != _text(b):
                        mismatches += 1
                        print(f"  check {key}: judged {_text(a)!r} vs decoded {_text(b)!r}")
        print(f"check: {mismatches} difference(s) between judged and decoded outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
