"""The machine a run uses: precision, data-parallel processes, model wrappers, seeds.

Shared by training, the encoder cache and checkpoints; knows nothing of stores or runs.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

__all__ = [
    "cpu_has_native_bf16",
    "cpu_info",
    "forget_other_precision",
    "gather_objects",
    "resolve_precision",
    "seed_everything",
    "unwrap_base",
]


def gather_objects(accelerator: Any, obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (just ``[obj]`` in a single process)."""
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(out, obj)
    return out


def forget_other_precision(mixed: str) -> None:
    """Let this call use its own precision when an earlier one in the process used another.

    Accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision (a study whose trials differ in precision, a benchmark that runs the
    Trainer first). Only the precision part is dropped; the process group stays.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) that include native bf16 arithmetic.
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), Linux only.

    There, bf16 autocast ran a full fine-tuning step of Whisper base in 5.2 s against 8.9 s
    in fp32 (2 cores, AVX512-BF16), with the same losses to 2 decimals; without those
    instructions bf16 is emulated and slower than fp32.

    ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16`` (e.g. ``AVX2``, as ``bench/cpu-class.sh
    avx2`` sets to stand in for a CPU without AVX-512) forbids oneDNN those instructions, so
    the answer is then no as well.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and isa not in ("ALL", "DEFAULT") and not isa.startswith(BF16_ISAS):
        return False
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


def cpu_info() -> tuple[str, frozenset[str]]:
    """This CPU's model name and flags from /proc/cpuinfo (Linux; ("", {}) elsewhere)."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags":
                    return name, frozenset(value.split())
    except OSError:
        pass
    return name, flags


def resolve_precision(precision: str, cuda: bool) -> str:
    import torch

    if precision == "auto":
        if not cuda:
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA device; on CPU use precision: bf16 or fp32")
    return precision


def unwrap_base(model: Any) -> WhisperForConditionalGeneration:
    """The WhisperForConditionalGeneration under DDP and PEFT wrappers."""
    m = model.module if hasattr(model, "module") else model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
