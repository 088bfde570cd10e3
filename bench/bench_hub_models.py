"""A transformers-only hub revision served by the ct2 backend: the first load (converting) and
the second (reading the conversion cached by commit), against loading ``bundled:base``.

KB-Whisper's ``subtitle`` revision ships transformers weights only. Here the same case is
built offline from the bundled Whisper base: its transformers conversion (made once per
whisper-sv cache) becomes the ``subtitle`` tag of ``sv-test/whisper-base`` in a hub cache
written in the hub client's layout (``tests/hubcache.py``), read with ``HF_HUB_OFFLINE=1``.

Baseline: ``Transcriber("bundled:base")``, the CTranslate2 folder faster-whisper loads as it
is. Each load runs in a fresh process (no in-memory reuse); the time is the
``Transcriber(...)`` call inside it (imports excluded), and each process transcribes one
real phrase so the three can be compared.

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_hub_models.py`` (about 2 minutes on 2
cores; the first run on a fresh whisper-sv cache also converts the bundled model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the hub cache writer the tests use

from hubcache import add_revision, model_files  # noqa: E402

REPO = "sv-test/whisper-base"
CLIP = ROOT.parent / "shared" / "data" / "lexin-phrases" / "spanner_fast_bilbaltet.mp3"

CHILD = """
import json, sys, time
from whisper_sv.infer.transcriber import Transcriber
from whisper_sv.models.references import ct2_dir
t0 = time.perf_counter()
tr = Transcriber(sys.argv[1], backend="ct2", device="cpu")
load = time.perf_counter() - t0
text = tr.transcribe(sys.argv[2]).text if sys.argv[2] else ""
print(json.dumps({"load_s": load, "folder": str(ct2_dir(sys.argv[1])), "text": text}))
"""


def load_in_child(ref: str, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ref, str(CLIP) if CLIP.is_file() else ""],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{ref}: the child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="second loads to time (median)")
    args = parser.parse_args()

    from whisper_sv.models.references import transformers_dir

    source = transformers_dir("bundled:base")  # the whisper-sv cache's conversion (once)
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        hub = Path(tmp) / "hub"
        files = model_files(source, skip=["ct2_config.json"])
        commit = add_revision(hub, REPO, files, ["subtitle"])
        env = {
            **os.environ,
            "HF_HUB_CACHE": str(hub),
            "HF_HUB_OFFLINE": "1",
            "WHISPER_SV_CACHE": str(Path(tmp) / "whisper-sv-cache"),  # converts afresh
            "PYTHONPATH": str(ROOT / "src"),
        }
        base_env = {**env, "WHISPER_SV_CACHE": str(source.parent)}  # bundled, as installed
        load_in_child("bundled:base", base_env)  # warm the page cache for the baseline
        baseline = load_in_child("bundled:base", base_env)
        ref = f"{REPO}@subtitle"
        first = load_in_child(ref, env)
        seconds = sorted(load_in_child(ref, env)["load_s"] for _ in range(args.repeats))
        second = seconds[len(seconds) // 2]
        size = sum(f.stat().st_size for f in files.values()) / 1e6

    print(f"revision {ref} (commit {commit[:12]}): transformers only, {size:.0f} MB")
    print(f"converted into {first['folder']}")
    print(f"baseline bundled:base load           {baseline['load_s']:6.2f} s   1.00x")
    for name, s in (
        ("first load (converts once)", first["load_s"]),
        ("second load (cached)", second),
    ):
        print(f"{name:<36} {s:6.2f} s  {s / baseline['load_s']:5.2f}x")
    same = first["text"] == baseline["text"]
    print(f"transcript of {CLIP.name}: {first['text']!r} ({'same as' if same else 'NOT'} bundled)")


if __name__ == "__main__":
    main()
