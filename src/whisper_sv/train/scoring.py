"""Scoring a model on a feature-store split: teacher-forced loss and greedy WER/CER.

One encoder pass per batch serves both the validation loss and a batched greedy decode with a
KV cache, bounded by the longest reference + a margin, with no temperature fallback. Training
(:mod:`whisper_sv.train.trainer`), the demo, the pipeline, checkpoint averaging and the search all
score through here, with the store's own language and task. (Scoring a model on an audio
manifest through faster-whisper is :mod:`whisper_sv.infer.evaluate`.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_sv.data.store import FeatureStore

__all__ = [
    "EvalResult",
    "Evaluator",
    "evaluate_dataset",
    "evaluate_split",
    "finish_eval",
    "greedy_decode",
    "prompt_ids",
    "strip_sot",
    "decoder_io",
    "suppress_lists",
]

LABEL_MARGIN_TOKENS = 10  # greedy decoding may run this many tokens past the longest reference


@dataclass(frozen=True)
class EvalResult:
    """One evaluation pass over validation clips."""

    val_loss: float  # mean token cross-entropy (teacher forced)
    wer: float  # percent, normalised text
    cer: float  # percent, normalised text
    n: int  # clips evaluated
    seconds: float  # wall time of the pass
    references: tuple[str, ...] = field(repr=False, default=())
    hypotheses: tuple[str, ...] = field(repr=False, default=())


def strip_sot(labels: torch.Tensor, sot: int) -> torch.Tensor:
    """Drop a leading ``<|startoftranscript|>``: the model prepends it when it shifts labels.

    (What the Hugging Face blog's collator does; without it the model learns to predict SOT.)
    """
    if labels.shape[1] > 0 and bool((labels[:, 0] == sot).all()):
        return labels[:, 1:]
    return labels


def decoder_io(labels: torch.Tensor, sot: int, pad: int) -> dict[str, torch.Tensor]:
    """Decoder inputs and loss targets for label rows that may begin with a previous-text
    prompt (``<|startofprev|>`` ... before ``<|startoftranscript|>``; -100 pads each row).

    Rows without a prompt get what the model makes of ``strip_sot(labels)`` (inputs: the row
    shifted right behind SOT); in a prompted row the inputs are the row itself and no loss
    falls on the prompt or on predicting SOT, as in Whisper's training.
    """
    import torch

    inputs = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
    targets = labels[:, 1:].clone()
    starts = (labels == sot).int().argmax(dim=1)  # SOT's place: 0 in a row without a prompt
    positions = torch.arange(targets.shape[1], device=labels.device)
    targets[positions[None, :] < starts[:, None]] = -100
    return {"decoder_input_ids": inputs, "labels": targets}


def has_prompt(labels: torch.Tensor, startofprev: int) -> bool:
    """Whether any label row begins with a previous-text prompt."""
    return labels.shape[1] > 0 and bool((labels[:, 0] == startofprev).any())


def prompt_ids(processor: WhisperProcessor, language: str, task: str) -> list[int]:
    tok = processor.tokenizer
    names = ["<|startoftranscript|>", f"<|{language}|>", f"<|{task}|>", "<|notimestamps|>"]
    ids = tok.convert_tokens_to_ids(names)
    unknown = [n for n, i in zip(names, ids, strict=True) if i is None or i == tok.unk_token_id]
    if unknown:
        raise ValueError(f"the tokenizer has no {unknown}; check the store's language/task")
    return [int(i) for i in ids]


def suppress_lists(model: Any, eot: int, vocab: int) -> tuple[list[int], list[int]]:
    """Tokens never emitted (the model's suppress list + every special/timestamp token but
    <|endoftext|>) and tokens not emitted first (space, <|endoftext|>), as in Whisper."""
    gc = getattr(model, "generation_config", None)
    suppress = {int(t) for t in (getattr(gc, "suppress_tokens", None) or []) if 0 <= t < vocab}
    suppress.update(range(eot + 1, vocab))
    begin = [int(t) for t in (getattr(gc, "begin_suppress_tokens", None) or [220, eot])]
    return sorted(suppress), begin


def greedy_decode(
    model: WhisperForConditionalGeneration,
    encoder_hidden: torch.Tensor,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    eot_id: int,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Batched greedy decoding from encoder outputs (B, frames, d) with a KV cache.

    Returns the text tokens of each clip (no prompt, no ``<|endoftext|>``). Stops when every
    clip has produced ``<|endoftext|>`` or after ``max_new_tokens``; no temperature fallback.
    """
    import torch

    b = encoder_hidden.shape[0]
    device = encoder_hidden.device
    inp = torch.tensor([list(prompt)] * b, dtype=torch.long, device=device)
    vocab = model.config.vocab_size
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if suppress_ids:
        mask[torch.as_tensor(list(suppress_ids), device=device)] = True
    begin_mask = mask.clone()
    if begin_suppress_ids:
        begin_mask[torch.as_tensor(list(begin_suppress_ids), device=device)] = True
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    cache = None
    with torch.no_grad():
        for i in range(max_new_tokens):
            out = model(
                encoder_outputs=(encoder_hidden,),
                decoder_input_ids=inp,
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            logits = out.logits[:, -1].float()
            logits.masked_fill_(begin_mask if i == 0 else mask, float("-inf"))
            nxt = logits.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, eot_id), nxt)
            steps.append(nxt)
            finished |= nxt == eot_id
            if bool(finished.all()):
                break
            inp = nxt[:, None]
    if not steps:
        return [[] for _ in range(b)]
    tokens = torch.stack(steps, 1).tolist()
    result = []
    for row in tokens:
        cut = row.index(eot_id) if eot_id in row else len(row)
        result.append(row[:cut])
    return result


class Evaluator:
    """Validation loss + WER/CER; the encoder runs once per batch (or not at all when cached)."""

    def __init__(
        self,
        processor: WhisperProcessor,
        model: Any,
        *,
        language: str,
        task: str,
        max_new_tokens: int,
        beam_size: int = 1,
    ) -> None:
        tok = processor.tokenizer
        self.tokenizer = tok
        self.sot = int(tok.convert_tokens_to_ids("<|startoftranscript|>"))
        self.eot = int(tok.convert_tokens_to_ids("<|endoftext|>"))
        self.prompt = prompt_ids(processor, language, task)
        self.language, self.task = language, task
        self.max_new_tokens = max_new_tokens
        self.beam_size = beam_size
        self.suppress, self.begin = suppress_lists(model, self.eot, model.config.vocab_size)

    def batch(
        self, model: Any, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[float, int, list[str], list[str]]:
        """(loss sum, label tokens, references, hypotheses) of one batch."""
        import torch

        labels = strip_sot(labels.to(hidden.device), self.sot)
        with torch.no_grad():
            out = model(encoder_outputs=(hidden,), labels=labels, use_cache=False)
        n_tok = int((labels != -100).sum())
        loss_sum = float(out.loss) * n_tok
        longest = int((labels != -100).sum(1).max())
        # Labels hold the prompt tail (<|sv|><|transcribe|><|notimestamps|>), text and
        # <|endoftext|>; the text is at most `longest` tokens.
        budget = min(
            self.max_new_tokens,
            longest + max(LABEL_MARGIN_TOKENS, longest // 4),
            MAX_DECODER_POSITIONS - len(self.prompt),
        )
        if self.beam_size == 1:
            hyp_ids = greedy_decode(
                model,
                hidden,
                self.prompt,
                max_new_tokens=budget,
                eot_id=self.eot,
                suppress_ids=self.suppress,
                begin_suppress_ids=self.begin,
            )
        else:
            hyp_ids = self._beam(model, hidden, budget)
        refs = [
            self.tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True)
            for row in labels.tolist()
        ]
        hyps = self.tokenizer.batch_decode(hyp_ids, skip_special_tokens=True)
        return loss_sum, n_tok, [r.strip() for r in refs], [h.strip() for h in hyps]

    def _beam(self, model: Any, hidden: torch.Tensor, budget: int) -> list[list[int]]:
        from transformers.modeling_outputs import BaseModelOutput

        out = model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            language=self.language,
            task=self.task,
            num_beams=self.beam_size,
            do_sample=False,
            max_new_tokens=budget,
            return_timestamps=False,
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        return [[int(t) for t in row if int(t) < self.eot] for row in seqs.tolist()]


def finish_eval(
    parts: Sequence[tuple[float, int, list[str], list[str]]], seconds: float
) -> EvalResult:
    from whisper_sv.core.text import error_rates

    loss_sum = sum(p[0] for p in parts)
    n_tok = sum(p[1] for p in parts)
    refs = [r for p in parts for r in p[2]]
    hyps = [h for p in parts for h in p[3]]
    rates = error_rates(refs, hyps)
    return EvalResult(
        val_loss=loss_sum / max(n_tok, 1),
        wer=rates.wer,
        cer=rates.cer,
        n=len(refs),
        seconds=seconds,
        references=tuple(refs),
        hypotheses=tuple(hyps),
    )


def evaluate_dataset(
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    dataset: Any,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    language: str = "sv",
    task: str = "transcribe",
    beam_size: int = 1,
) -> EvalResult:
    """Validation loss and WER/CER of ``model`` on ``dataset`` items (log-mel + labels).

    The fast path :func:`train` uses: one encoder pass per batch serves the teacher-forced
    loss and the batched greedy decode.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from whisper_sv.data.store import collate

    device = next(model.parameters()).device
    ev = Evaluator(
        processor,
        model,
        language=language,
        task=task,
        max_new_tokens=max_new_tokens,
        beam_size=beam_size,
    )
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    parts = []
    try:
        with torch.no_grad():
            for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate):
                feats = batch["input_features"].to(device, dtype=next(model.parameters()).dtype)
                hidden = model.get_encoder()(feats).last_hidden_state
                parts.append(ev.batch(model, hidden, batch["labels"]))
    finally:
        model.train(was_training)
    return finish_eval(parts, time.perf_counter() - t0)


def evaluate_split(
    model: Any,
    store: FeatureStore | str | os.PathLike,
    split: str,
    *,
    processor: WhisperProcessor | None = None,
    limit: int = 0,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    beam_size: int = 1,
) -> EvalResult:
    """Loss and WER/CER of ``model`` on the store split ``split`` (its first ``limit`` clips;
    0: all), decoded with the store's own language and task prompt.

    ``model`` is a model reference (loaded here) or a loaded model with its ``processor``.
    """
    from whisper_sv.data.store import FeatureStore
    from whisper_sv.models.references import load_model

    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    if split not in store.splits():
        raise ValueError(f"{store.path} has no {split} split (it has {store.splits()})")
    if isinstance(model, (str, os.PathLike)):
        model, processor = load_model(str(model))
    elif processor is None:
        raise ValueError("evaluate_split: give the processor with a loaded model")
    n = store.num_rows(split)
    return evaluate_dataset(
        model,
        processor,
        store.torch_dataset(split),
        indices=list(range(min(n, limit) if limit else n)),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        language=store.config.language,
        task=store.config.task,
        beam_size=beam_size,
    )
