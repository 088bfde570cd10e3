"""Whisper's multilingual tokenizer ids, the processor and the generation config."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperProcessor

log = logging.getLogger(__name__)

# Whisper's multilingual vocabulary: 50,257 BPE entries + 107 special tokens (ids 50257-50363)
# + 1,501 timestamp tokens <|0.00|> ... <|30.00|> (ids 50364-51864).
VOCAB_SIZE = 51_865
NO_TIMESTAMPS_TOKEN_ID = 50_363
TIMESTAMP_BEGIN_ID = 50_364
N_TIMESTAMPS = 1_501  # 0.00 s to 30.00 s in 0.02 s steps
TIME_PRECISION_S = 0.02
TASK_TO_ID = {"translate": 50_358, "transcribe": 50_359}


def _timestamp_tokens() -> list[str]:
    return [f"<|{i * TIME_PRECISION_S:.2f}|>" for i in range(N_TIMESTAMPS)]


def build_processor(tokenizer_json: str | os.PathLike, n_mels: int = 80) -> WhisperProcessor:
    """The real multilingual Whisper processor from a ``tokenizer.json``.

    The tokenizer gets the 1,501 timestamp tokens (ids 50364-51864) the shipped file lacks,
    so it covers the model's 51,865 outputs. transformers 5 marks only ``<|endoftext|>`` as
    special when it loads a bare ``tokenizer.json``: the file's other added tokens
    (``<|startoftranscript|>`` ... ``<|notimestamps|>``) are passed as special here, else
    ``skip_special_tokens`` keeps them and timestamp decoding breaks (it takes
    ``timestamp_begin`` as the last special id + 1). The timestamp tokens are added as
    ordinary added tokens, as in OpenAI's hub tokenizers: made special, they would move
    ``timestamp_begin`` past the vocabulary and ``output_offsets`` would come back empty.
    """
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    path = Path(tokenizer_json)
    if not path.is_file():
        raise ValueError(f"tokenizer file not found: {path}; pass the tokenizer.json of a model")
    data = json.loads(path.read_text(encoding="utf-8"))
    timestamps = set(_timestamp_tokens())
    added = sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    specials = [
        AddedToken(t["content"], special=True, normalized=False)
        for t in added
        if t["content"] not in timestamps
    ]
    tokenizer = WhisperTokenizer(tokenizer_file=str(path), extra_special_tokens=specials)
    have = set(tokenizer.get_vocab())
    missing = [t for t in _timestamp_tokens() if t not in have]
    if missing:
        tokenizer.add_tokens(
            [
                AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False)
                for t in missing
            ]
        )
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    if tokenizer.all_special_ids[-1] + 1 != first:
        raise ValueError(
            f"{path}: timestamp tokens start at id {first}, expected right after the last "
            f"special token ({tokenizer.all_special_ids[-1]}); is this a Whisper tokenizer.json?"
        )
    if tokenizer.pad_token is None:
        # OpenAI's hub tokenizers pad with <|endoftext|>; batch encoding needs a pad token.
        tokenizer.pad_token = "<|endoftext|>"
    feature_extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def generation_config_for(
    processor: WhisperProcessor,
    *,
    suppress_tokens: Sequence[int],
    begin_suppress_tokens: Sequence[int] = (220, 50_257),
    alignment_heads: Sequence[Sequence[int]] | None = None,
    lang_ids: Sequence[int] | None = None,
    max_length: int = 448,
) -> GenerationConfig:
    """A multilingual Whisper ``GenerationConfig`` (what ``generate(language=, task=)`` reads).

    ``lang_ids``: the language token ids the model knows (default: every ``<|xx|>`` token of
    the tokenizer between ``<|startoftranscript|>`` and ``<|translate|>``).
    ``forced_decoder_ids`` stays None: language and task are passed to ``generate``.
    """
    from transformers import GenerationConfig

    tok = processor.tokenizer
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    task_to_id = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("translate", "transcribe")}
    if lang_ids is None:
        lang_ids = range(sot + 1, task_to_id["translate"])
    lang_to_id = {tok.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
    gc = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id=task_to_id,
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tok.convert_tokens_to_ids("<|startofprev|>"),
        max_initial_timestamp_index=50,  # OpenAI's 1.0 s limit on the first timestamp
        suppress_tokens=[int(i) for i in suppress_tokens],
        begin_suppress_tokens=[int(i) for i in begin_suppress_tokens],
        forced_decoder_ids=None,
        return_timestamps=False,
    )
    if alignment_heads:
        gc.alignment_heads = [[int(a), int(b)] for a, b in alignment_heads]
    return gc


def processor_is_complete(processor: WhisperProcessor) -> bool:
    tok = processor.tokenizer
    first, last = tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"])
    return (
        last == first + N_TIMESTAMPS - 1
        and first == tok.convert_tokens_to_ids("<|notimestamps|>") + 1
        and tok.all_special_ids[-1] + 1 == first  # what timestamp decoding assumes
        and tok.convert_tokens_to_ids("<|startoftranscript|>") in tok.all_special_ids
    )


def processor_from_dir(folder: Path) -> WhisperProcessor:
    """The processor saved in ``folder``, rebuilt from its tokenizer.json when it is incomplete.

    Folders written by ``save_pretrained`` keep the special and timestamp tokens; folders that
    hold only a bare ``tokenizer.json`` (CTranslate2 exports, some hub repos) do not.
    """
    from transformers import WhisperProcessor

    n_mels = n_mels_of(folder)
    if (folder / "tokenizer_config.json").is_file():
        try:
            processor = WhisperProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            log.debug("saved processor in %s unusable (%s); rebuilding", folder, e)
        else:
            if processor_is_complete(processor):
                return processor
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder} has no tokenizer.json; copy the model's tokenizer.json there")
    return build_processor(folder / "tokenizer.json", n_mels=n_mels)


def n_mels_of(folder: Path) -> int:
    """Mel bins from a folder's preprocessor/processor/model config (80 when none says)."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        return int(json.loads(pre.read_text(encoding="utf-8")).get("feature_size", 80))
    proc = folder / "processor_config.json"  # transformers 5 nests the feature extractor here
    if proc.is_file():
        fe = json.loads(proc.read_text(encoding="utf-8")).get("feature_extractor", {})
        if "feature_size" in fe:
            return int(fe["feature_size"])
    cfg = folder / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text(encoding="utf-8")).get("num_mel_bins", 80))
    return 80


def write_feature_config(folder: Path, n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=n_mels).to_json_file(
        str(folder / "preprocessor_config.json")
    )
