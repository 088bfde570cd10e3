"""Translation labels from the start model: its English for a share of the training windows,
labelled with the translate task (self-distillation), so the decoder keeps translating.

:func:`label_translation_windows` labels a run's translation windows once, at step 0, and keeps
the labels in ``RUN/translate-labels.json`` so that a resumed run trains on the same ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisper_sv.core import run_folder as registry
from whisper_sv.core.runtime import unwrap_base
from whisper_sv.core.text import COMPRESSION_RATIO_THRESHOLD, compression_ratio
from whisper_sv.train.encoder_cache import finish_encoder
from whisper_sv.train.guards import is_english
from whisper_sv.train.scoring import Evaluator, greedy_decode, prompt_ids

log = logging.getLogger(__name__)

__all__ = [
    "label_translation_windows",
    "translation_labels",
    "usable_translation",
]


# A decoded text whose zlib compression ratio is above this is a loop (faster-whisper's rule).
def translation_labels(
    model: Any,
    processor: Any,
    hidden: Any,
    labels: Sequence[Sequence[int]],
    chosen: Sequence[int],
    *,
    language: str,
    device: Any,
    batch_size: int = 16,
    encoder_from: int | None = None,
) -> dict[int, list[int]]:
    """{index: translate-task label} for the ``chosen`` rows of the encoder outputs ``hidden``
    (with ``encoder_from``: the hidden states entering that encoder layer, finished here).

    Greedy, bounded by 1.5x the row's Swedish label plus 10 tokens; a row whose English is
    empty, a loop (compression ratio > 2.4), cut off by the budget, or not English keeps its
    label. Why the last: a quarter of the pretrained base's "English" for single Swedish
    words is the word spelt back ("Hengel" for *hänger*); trained as translations, those
    teach the translate task to answer in Swedish (docs/experiments.md, section 8).
    """
    import torch

    tok = processor.tokenizer
    eot = int(tok.convert_tokens_to_ids("<|endoftext|>"))
    prompt = prompt_ids(processor, language, "translate")
    ev = Evaluator(processor, model, language=language, task="translate", max_new_tokens=440)
    out: dict[int, list[int]] = {}
    order = sorted(chosen, key=lambda i: len(labels[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        h = torch.from_numpy(np.stack([hidden[i] for i in idx])).to(device, dtype=torch.float32)
        if encoder_from is not None:
            h = finish_encoder(unwrap_base(model).get_encoder(), h, encoder_from)
        budget = min(440 - len(prompt), int(1.5 * max(len(labels[i]) for i in idx)) + 10)
        ids = greedy_decode(
            model,
            h,
            prompt,
            max_new_tokens=budget,
            eot_id=eot,
            suppress_ids=ev.suppress,
            begin_suppress_ids=ev.begin,
        )
        for i, row in zip(idx, ids, strict=True):
            text = tok.decode(row, skip_special_tokens=True).strip()
            if len(row) < budget and usable_translation(text):
                out[i] = prompt + list(row) + [eot]
    return out


def usable_translation(text: str) -> bool:
    """Whether the start model's answer to the translate task can be trained as one: not
    empty, not a loop, and English (translation_labels says why)."""
    text = text.strip()
    return (
        bool(text) and compression_ratio(text) <= COMPRESSION_RATIO_THRESHOLD and is_english(text)
    )


def label_translation_windows(
    enc: Any,
    chosen: Sequence[int],
    *,
    path: Path,
    resumed: bool,
    model: Any,
    processor: Any,
    accelerator: Any,
    language: str,
    batch_size: int,
    encoder_from: int | None = None,
) -> None:
    """Label the translation windows ``chosen`` of the cached training windows ``enc`` (one
    clip each, ``translate_share`` of the clips: data_plan.with_translation_windows) with the
    start model's English, in place: made once, at step 0, and kept in ``path`` for a resume."""
    import torch

    acc = accelerator
    if path.is_file():
        made = {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    elif resumed:
        log.warning("%s is missing: training on without translation labels", path)
        return
    else:
        base = acc.unwrap_model(model)
        base.eval()
        with torch.no_grad(), acc.autocast():
            made = translation_labels(
                base,
                processor,
                enc.hidden,
                enc.labels,
                chosen,
                language=language,
                device=acc.device,
                batch_size=batch_size,
                encoder_from=encoder_from,
            )
        if acc.is_main_process:
            registry.write_text_atomic(path, json.dumps(made))
        log.info(
            "%d of %d translation clips labelled with the start model's English (the rest "
            "were empty, loops or not English: they train in Swedish); %d training windows "
            "in all",
            len(made),
            len(chosen),
            len(enc.labels),
        )
    for i, label in made.items():
        enc.labels[i] = label
