"""Packing short training clips into full 30 s windows.

Whisper's encoder always reads a 30 s window (3000 log-mel frames) and the decoder's
cross-attention always reads its 1500 outputs, however short the clip. For clips of a few
seconds most of that work is spent on padding: on a CPU one encoder pass costs ~0.7 s and the
cross-attention projections are most of a decoder training step. Joining clips one after
another into one window (as Whisper's own training data was cut: 30 s of speech holding several
sentences) spends that work on speech: ~6 clips of 4 s for the price of one.

A window's log-mel is what Whisper's extractor gives for the joined audio: clips are placed
one after another, values are clamped to the window's floor (its loudest frame minus 8 log
units, i.e. the largest per-clip floor), and the rest is padded with that floor. Its label
is the prompt, the clips' texts joined by spaces and tokenised again after a leading space
(BPE tokens carry their leading space, and Whisper's transcripts start with one), then
``<|endoftext|>``.

A share of windows (``timestamp_share``) is labelled in Whisper's timestamped form instead,
each clip between the timestamps of its start and end in the window. Trained on transcripts
without timestamps only, Whisper's decoder forgets them, and long-form transcription (which
moves its 30 s window by the last timestamp) and subtitles (one cue per segment) decay to one
segment per window; the shared labels keep both (KB-Whisper trains with timestamps on most
samples for the same reason).

A share of windows (``prompt_share``) is preceded by the text of the window before it in the
plan (``<|startofprev|>`` + its last tokens, at most 223 as Whisper's decoder was trained),
which is what long-form decoding with ``condition_on_previous_text`` feeds the decoder; the
loss skips the prompt (``evaluation.decoder_io``).

Only training data is packed: validation and test clips are scored one by one, as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from whisper_sv.core.audio import N_FRAMES
from whisper_sv.data.feature_config import MAX_DECODER_POSITIONS, MAX_PREVIOUS_TOKENS

__all__ = ["add_single_windows", "plan_windows", "PackedRows"]

PROMPT_LENGTH = 4  # <|startoftranscript|> <|sv|> <|transcribe|> <|notimestamps|>
# Whisper's decoder has 448 positions. Tokenising the joined text again can differ from the
# sum of the clips' counts by about a token per join (a first word gains its leading space):
# 16 spare positions cover 8 clips and more.
MAX_WINDOW_LABELS = 432
TIMESTAMP_TOKENS_PER_CLIP = 2  # a timestamped window spends a start and an end token per clip


def plan_windows(
    n_frames: Sequence[int],  # per clip: its audio's 10 ms hops (duration x 100)
    n_labels: Sequence[int],
    *,
    max_clips: int,
    seed: int,
    shard_offsets: Sequence[int] | None = None,
    max_frames: int = N_FRAMES,
    max_labels: int = MAX_WINDOW_LABELS,
) -> list[list[int]]:
    """Group clip indices into windows of at most ``max_clips`` clips, ``max_frames`` frames
    and ``max_labels`` label tokens, filling greedily in a seeded random order.

    With ``shard_offsets`` (the store's row offsets per shard) a window never spans two
    shards, so reading a window touches one shard. The plan is a pure function of its
    inputs: a resumed run, and its encoder cache, see the same windows. A clip too long to
    share a window gets one of its own.
    """
    if max_clips < 1:
        raise ValueError(f"max_clips must be >= 1 (got {max_clips})")
    if len(n_frames) != len(n_labels):
        raise ValueError("n_frames and n_labels must have one entry per clip")
    bounds = [int(b) for b in shard_offsets] if shard_offsets is not None else [0, len(n_frames)]
    if bounds[0] != 0 or bounds[-1] != len(n_frames):
        raise ValueError("shard_offsets must run from 0 to the number of clips")
    rng = np.random.default_rng([seed, 7])
    windows: list[list[int]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        current: list[int] = []
        frames = labels = 0
        for i in (lo + int(x) for x in rng.permutation(hi - lo)):
            f = int(n_frames[i])
            # Text tokens only: a window has one prompt and one end token.
            t = max(0, int(n_labels[i]) - PROMPT_LENGTH - 1)
            fits = (
                len(current) < max_clips
                and frames + f <= max_frames
                and labels + t + PROMPT_LENGTH + 1 <= max_labels
            )
            if current and not fits:
                windows.append(current)
                current, frames, labels = [], 0, 0
            current.append(i)
            frames += f
            labels += t
        if current:
            windows.append(current)
    return windows


def add_single_windows(
    windows: Sequence[Sequence[int]], shard_offsets: Sequence[int], clips: Sequence[int]
) -> tuple[list[list[int]], list[int]]:
    """``windows`` with a window of one clip added for each of ``clips``, after the windows of
    the clip's shard (windows of one shard stay together); and the added windows' indices."""
    bounds = [int(b) for b in shard_offsets]

    def shard(clip: int) -> int:
        return int(np.searchsorted(bounds, clip, side="right")) - 1

    old: dict[int, list[list[int]]] = {}
    new: dict[int, list[list[int]]] = {}
    for w in windows:
        old.setdefault(shard(w[0]), []).append(list(w))
    for c in sorted(int(c) for c in clips):
        new.setdefault(shard(c), []).append([c])
    out: list[list[int]] = []
    added: list[int] = []
    for s in sorted(old.keys() | new.keys()):
        out += old.get(s, [])
        added += range(len(out), len(out) + len(new.get(s, [])))
        out += new.get(s, [])
    return out, added


class PackedRows:
    """A dataset of packed windows over a clip dataset (``FeatureRows``).

    Item ``w``: ``{"input_features": float32 (n_mels, 3000), "labels": int64 (T,)}`` like a
    clip's; ``offsets`` gives the windows of each shard, like ``FeatureRows.offsets``.
    """

    def __init__(
        self,
        clips: Any,
        windows: Sequence[Sequence[int]],
        texts: Sequence[str],
        tokenizer: Any,
        *,
        timestamp_share: float = 0.0,
        prompt_share: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.clips = clips
        self.windows = [list(w) for w in windows]
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.eot = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        # Windows that get timestamp labels: a seeded draw per window, fixed for the run.
        draws = np.random.default_rng([seed, 11]).random(len(self.windows))
        self.timestamped = draws < timestamp_share
        self.timestamp_begin = int(tokenizer.convert_tokens_to_ids("<|0.00|>"))
        # Windows trained after the previous window's text: a draw of their own (seed 17), so
        # turning prompts on leaves the timestamp draw as it was.
        draws = np.random.default_rng([seed, 17]).random(len(self.windows))
        self.prompted = draws < prompt_share
        self.startofprev = int(tokenizer.convert_tokens_to_ids("<|startofprev|>"))
        # Windows of one shard are consecutive (plan_windows): the training order can
        # shuffle shard by shard, as it does for clips.
        shard_of = [clips.locate(w[0])[0] for w in self.windows]
        n_shards = len(clips.offsets) - 1
        counts = np.bincount(shard_of, minlength=n_shards) if shard_of else np.zeros(n_shards)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def window_text(self, index: int) -> str:
        """The transcript of window ``index``: its clips' texts joined by spaces."""
        return " ".join(self.texts[i].strip() for i in self.windows[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        parts, floors = [], []
        prompt: list[int] = []
        for i in self.windows[index]:
            feats, pad_value, labels = self.clips.audio_frames(i)
            parts.append(feats)
            floors.append(pad_value)
            prompt = prompt or [int(t) for t in labels[:PROMPT_LENGTH]]
        # A clip's pad value is its floor (its loudest frame - 8, normalised); the joined
        # audio's loudest frame is the loudest clip's, so its floor is the largest.
        floor = max(floors)
        body = np.concatenate(parts, axis=1)[:, :N_FRAMES]
        out = np.full((body.shape[0], N_FRAMES), floor, dtype=np.float32)
        out[:, : body.shape[1]] = np.maximum(body, floor)
        if self.timestamped[index]:
            ids = self._timestamped_ids(index, [p.shape[1] for p in parts])
            labels = prompt[: PROMPT_LENGTH - 1] + ids
        else:
            # After a space, as Whisper writes (FeatureConfig.prefix_space says why).
            ids = self.tokenizer.encode(" " + self.window_text(index), add_special_tokens=False)
            labels = prompt + list(ids)
        labels = self._previous_text(index, len(labels) + 1) + labels
        return {
            "input_features": torch.from_numpy(out),
            "labels": torch.tensor(labels + [self.eot], dtype=torch.long),
        }

    def _previous_text(self, index: int, n_labels: int) -> list[int]:
        """``<|startofprev|>`` + the last tokens of the previous window's text for a prompted
        window (as many as fit beside its ``n_labels``); [] for the rest and for the first
        window of a shard, which has none before it."""
        if not self.prompted[index] or index == 0 or index in self.offsets:
            return []
        room = min(MAX_PREVIOUS_TOKENS, MAX_DECODER_POSITIONS - n_labels - 1)
        if room < 1:
            return []
        ids = self.tokenizer.encode(" " + self.window_text(index - 1), add_special_tokens=False)
        return [self.startofprev, *ids[-room:]]

    def _timestamped_ids(self, index: int, frames: Sequence[int]) -> list[int]:
        """Whisper's timestamped form of window ``index``, without <|notimestamps|>:
        ``<|0.00|> text one<|2.40|><|2.40|> text two<|5.10|>`` (0.02 s steps, as Whisper's
        training data; each clip's span is its place in the window, silences included)."""
        ids: list[int] = []
        start = 0
        for i, n in zip(self.windows[index], frames, strict=True):
            end = min(start + int(n), N_FRAMES)
            text = self.tokenizer.encode(" " + self.texts[i].strip(), add_special_tokens=False)
            ids += [self._timestamp(start), *text, self._timestamp(end)]
            start = end
        return ids

    def _timestamp(self, frame: int) -> int:
        # 100 log-mel frames a second, 50 timestamp steps a second.
        return self.timestamp_begin + min(round(frame / 2), N_FRAMES // 2)
