"""Feature pipeline on Ray (a local cluster of N CPUs) vs the local engine with ``--workers N``.

Baseline: ``build_store(..., BuildOptions(workers=N))`` on the same wav files, in the same run.
Both are timed from the wav files to a finished store; the Ray cluster is started before its
timer (a cluster is started once and serves many runs), and its start-up is printed apart.
Then the two stores are compared: the same rows in the same order, the same labels, and the
features equal (both are float16; equal within float16 rounding is the requirement).

    .venv/bin/python bench/bench_features_ray.py --n 200 --cpus 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import make_clips  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build(tsv: Path, processor, out: Path, **options) -> float:
    """Seconds of one build_store run into a fresh ``out``."""
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_store(open_source(f"manifest:{tsv}"), out, BuildOptions(progress=False, **options),
                processor=processor)  # fmt: skip
    return time.perf_counter() - start


def same_stores(a: Path, b: Path) -> tuple[int, float]:
    """(rows compared, largest feature difference); raises AssertionError on another row."""
    import numpy as np

    from whisper_sv.data.store import FeatureStore

    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sa.splits() == sb.splits(), (sa.splits(), sb.splits())
    assert sa.manifest["splits"] == sb.manifest["splits"]
    rows, worst = 0, 0.0
    for split in sa.splits():
        for ra, rb in zip(sa.rows(split), sb.rows(split), strict=True):
            assert (ra["id"], ra["labels"]) == (rb["id"], rb["labels"]), ra["id"]
            fa, fb = np.asarray(ra["input_features"]), np.asarray(rb["input_features"])
            assert fa.shape == fb.shape, ra["id"]
            worst = max(worst, float(np.abs(fa.astype(np.float32) - fb.astype(np.float32)).max()))
            np.testing.assert_allclose(fa, fb, rtol=1e-3, atol=1e-3)  # float16 resolution
            rows += 1
    return rows, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="clips (default 200)")
    parser.add_argument("--cpus", type=int, default=2, help="local workers = Ray CPUs (2)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "whisper-sv-bench",
        help="folder for the rendered clips and the stores",
    )
    args = parser.parse_args(argv)

    import ray

    from whisper_sv.models.bundled import bundled_tokenizer_json
    from whisper_sv.models.processor import build_processor

    tsv = make_clips(args.n, args.cache)
    processor = build_processor(bundled_tokenizer_json(), n_mels=80)
    local_out, ray_out = args.cache / "store-local", args.cache / "store-ray"
    local_s = build(tsv, processor, local_out, workers=args.cpus)

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    try:
        ray_s = build(tsv, processor, ray_out, engine="ray")
    finally:
        ray.shutdown()
    rows, worst = same_stores(local_out, ray_out)
    print(f"{args.n} clips, {os.cpu_count()} CPU cores, {args.cpus} workers / Ray CPUs")
    print("\n| engine | seconds | clips/s | vs local |")
    print("|---|---|---|---|")
    print(f"| local `--workers {args.cpus}` | {local_s:.1f} | {args.n / local_s:.1f} | 1.00x |")
    print(
        f"| Ray, local cluster of {args.cpus} CPUs | {ray_s:.1f} | {args.n / ray_s:.1f} "
        f"| {local_s / ray_s:.2f}x |"
    )
    print(f"\nRay cluster start (not in the timing): {ray_start_s:.1f} s")
    print(f"identical stores: {rows} rows, same ids/labels, largest feature difference {worst:g}")
    shutil.rmtree(local_out, ignore_errors=True)
    shutil.rmtree(ray_out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
