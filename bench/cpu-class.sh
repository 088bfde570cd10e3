#!/usr/bin/env bash
# Run a command as on a CPU of another class: `bench/cpu-class.sh avx2 whisper-sv demo`.
#
#   avx2    no AVX-512 and no native bf16 (most laptops: Intel consumer CPUs since 2021; AMD
#           before Zen 4). oneDNN, MKL and CTranslate2 are held to AVX2 instructions, torch's
#           own kernels too, and the automatic precision chooses fp32 (runtime.py reads
#           ONEDNN_MAX_CPU_ISA), as it does on such a CPU.
#   native  this CPU as it is.
#
# The clock, caches and core count stay this machine's: a real AVX2-only CPU of a lower clock
# is slower still (docs/benchmarks.md gives both).
set -euo pipefail
class="${1:?usage: bench/cpu-class.sh avx2|native COMMAND...}"
shift
case "$class" in
  avx2)
    export ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
    export CT2_FORCE_CPU_ISA=AVX2 ;;
  native) ;;
  *) echo "unknown CPU class '$class': use avx2 or native" >&2; exit 2 ;;
esac
exec "$@"
