#!/usr/bin/env bash
# The GPU check: bf16 training vs the blog's fp16 Seq2SeqTrainer, the frozen-encoder path,
# batched faster-whisper vs one by one, a short fine-tune's WER before/after; the table goes to
# docs/benchmarks.md's GPU section. Under 8 minutes on one CUDA GPU.
#
#   bench/gpu_check.sh             # on a CUDA machine
#   bench/gpu_check.sh --dry-run   # anywhere: the same code on the CPU, tiny sizes, seconds
#   bench/gpu_check.sh --dry-run --write /tmp/out.md
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/gpu_check.py" "$@"
