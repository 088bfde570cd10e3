"""Feature pipeline vs the Hugging Face blog recipe, on the same wav files.

Baseline: the blog's ``prepare_dataset`` (WhisperFeatureExtractor on 30 s padded audio + the
tokenizer with the Swedish/transcribe prefix) through ``datasets.Dataset.map`` in the main
process, then ``save_to_disk``. The one change: audio is decoded with soundfile inside
``prepare_dataset``, because ``datasets.Audio`` decoding needs torchcodec, which does not work
here (docs/facts.md). Ours: ``features.build_store`` over a ``manifest:`` source of the same files.

Both are timed from the wav files to features on disk; sizes are the folders on disk per hour of
audio. The clips are rendered once by the synthetic source and cached as 16-bit wav.

    .venv/bin/python bench/bench_features.py --n 500 --workers 1,2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BLOG_CLIPS_PER_S = 69.0  # docs/facts.md: blog recipe measured by hand on this kind of machine
BLOG_MB_PER_HOUR = 686.0  # docs/facts.md: its saved dataset


def make_clips(n: int, cache: Path) -> Path:
    """``cache/clips-<n>/manifest.tsv`` + wav files of ``n`` synthetic sentences (made once)."""
    import soundfile as sf
    from tqdm import tqdm

    from whisper_sv.core.audio import SAMPLE_RATE
    from whisper_sv.data.sources.synthetic import SyntheticOptions, SyntheticSource

    folder = cache / f"clips-{n}"
    tsv = folder / "manifest.tsv"
    if tsv.is_file():
        return tsv
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wav").mkdir(parents=True)
    source = SyntheticSource(SyntheticOptions(train=n, validation=0, test=0))
    lines = ["path\tsentence\tspeaker\tsplit"]
    for i, item in enumerate(tqdm(list(source.items("train")), desc="rendering clips")):
        name = f"wav/{i:05d}.wav"
        sf.write(tmp / name, source.load(item), SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{name}\t{item.sentence}\t{item.speaker}\ttrain")
    (tmp / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return tsv


def _rows(tsv: Path) -> list[dict[str, str]]:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    return [
        dict(zip(head, line.split("\t"), strict=True))
        | {"path": str(tsv.parent / line.split("\t")[0])}
        for line in lines[1:]
    ]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers): less sensitive than wall
    time to other jobs on a shared machine."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def audio_hours(tsv: Path) -> float:
    import soundfile as sf

    return sum(sf.info(r["path"]).duration for r in _rows(tsv)) / 3600


def run_blog(tsv: Path, processor, out: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds, MB on disk) of the blog recipe on the clips of ``tsv``."""
    import datasets
    import soundfile as sf

    feature_extractor = processor.feature_extractor
    tokenizer = processor.tokenizer
    tokenizer.set_prefix_tokens(language="swedish", task="transcribe")
    rows = _rows(tsv)
    ds = datasets.Dataset.from_dict(
        {"audio": [r["path"] for r in rows], "sentence": [r["sentence"] for r in rows]}
    )

    def prepare_dataset(batch):
        # The blog's function; the audio column holds a path decoded here (see module doc).
        array, rate = sf.read(batch["audio"], dtype="float32")
        batch["input_features"] = feature_extractor(array, sampling_rate=rate).input_features[0]
        batch["labels"] = tokenizer(batch["sentence"]).input_ids
        return batch

    datasets.disable_progress_bars()
    start, cpu = time.perf_counter(), cpu_seconds()
    mapped = ds.map(prepare_dataset, remove_columns=ds.column_names)
    mapped.save_to_disk(str(out))
    return time.perf_counter() - start, cpu_seconds() - cpu, folder_mb(out)


def run_ours(tsv: Path, processor, out: Path, workers: int) -> tuple[float, float, float, int]:
    """(seconds, CPU seconds, MB on disk, rows kept) of build_store on the clips of ``tsv``."""
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    start, cpu = time.perf_counter(), cpu_seconds()
    source = open_source(f"manifest:{tsv}")
    summary = build_store(
        source, out, BuildOptions(workers=workers, progress=False), processor=processor
    )
    seconds = time.perf_counter() - start
    return seconds, cpu_seconds() - cpu, folder_mb(out), sum(s.kept for s in summary.splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="clips (default 500)")
    parser.add_argument("--workers", default="1,2", help="worker counts for ours (comma list)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "whisper-sv-bench",
        help="folder for the rendered clips and the stores",
    )
    parser.add_argument("--skip-blog", action="store_true", help="only run ours")
    args = parser.parse_args(argv)

    from whisper_sv.models.bundled import bundled_tokenizer_json
    from whisper_sv.models.processor import build_processor

    tsv = make_clips(args.n, args.cache)
    hours = audio_hours(tsv)
    processor = build_processor(bundled_tokenizer_json(), n_mels=80)
    print(f"{args.n} clips, {hours * 60:.1f} min of audio, {os.cpu_count()} CPU cores")

    results: list[tuple[str, float, float, float]] = []  # name, clips/s, CPU ms/clip, MB/h
    if not args.skip_blog:
        out = args.cache / "blog-dataset"
        shutil.rmtree(out, ignore_errors=True)
        seconds, cpu, mb = run_blog(tsv, processor, out)
        results.append(
            ("blog recipe (datasets.map)", args.n / seconds, 1e3 * cpu / args.n, mb / hours)
        )
        shutil.rmtree(out, ignore_errors=True)
    for workers in (int(w) for w in args.workers.split(",")):
        out = args.cache / f"store-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, cpu, mb, kept = run_ours(tsv, processor, out, workers)
        if kept != args.n:
            print(f"warning: kept {kept} of {args.n} clips", file=sys.stderr)
        name = f"whisper-sv features --workers {workers}"
        results.append((name, args.n / seconds, 1e3 * cpu / args.n, mb / hours))
        shutil.rmtree(out, ignore_errors=True)

    blog = (
        results[0] if not args.skip_blog else ("facts.md", BLOG_CLIPS_PER_S, 0.0, BLOG_MB_PER_HOUR)
    )
    print("\n| pipeline | clips/s | vs blog | CPU ms/clip | MB per audio hour | vs blog |")
    print("|---|---|---|---|---|---|")
    for name, rate, cpu_ms, mbh in results:
        print(
            f"| {name} | {rate:.0f} | {rate / blog[1]:.2f}x | {cpu_ms:.1f} | {mbh:.0f} "
            f"| {mbh / blog[3]:.2f}x |"
        )
    if args.skip_blog:
        print(
            f"(baseline: {blog[0]} figures, {BLOG_CLIPS_PER_S:.0f} clips/s, {BLOG_MB_PER_HOUR:.0f} MB/h)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
