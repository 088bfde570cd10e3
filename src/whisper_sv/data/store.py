"""The feature store: Parquet shards of trimmed float16 log-mel, labels and metadata.

Layout::

    STORE/manifest.json              feature config + hash, model, source, counts, hours
    STORE/rejects.tsv                every input left out: split, id, audio, reason, detail
    STORE/<split>/shard-00000.parquet

A shard holds the inputs ``[k * shard_size, (k + 1) * shard_size)`` of its split, in the
source's order, minus the rejected ones. It is one file written atomically (temporary file,
fsync, ``os.replace``): its Parquet footer carries the shard's own bookkeeping (config hash,
inputs seen, rejects with reasons, seconds, speakers), so a shard and its rejects appear
together or not at all, and a re-run that skips finished shards never counts a reject twice.
``manifest.json`` and ``rejects.tsv`` are rebuilt from the footers of all shards present.

Features are stored trimmed (see ``whisper_sv.data.logmel``): the frames that carry audio as float16
plus the pad value the rest of Whisper's 3,000 frames take; readers rebuild the padded array.
A 5 s clip is 80 x ~500 x 2 bytes = 80 kB instead of 80 x 3000 x 4 = 960 kB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_sv.core.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from whisper_sv.core.fsutil import atomic_write_bytes, file_digest
from whisper_sv.data.feature_config import FeatureConfig, StoreError, tokenizer_identity

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "FeatureRows",
    "FeatureStore",
    "Reject",
    "ShardSampler",
    "StoreError",
    "collate",
    "open_store",
    "pad_labels",
    "read_shard_info",
    "shard_path",
    "shard_permutation",
    "store_id",
    "write_manifest",
    "write_shard",
]

FORMAT_VERSION = 1  # bump when the shard schema or the manifest changes incompatibly
MANIFEST = "manifest.json"
REJECTS = "rejects.tsv"
_FOOTER_KEY = b"whisper_sv"  # Parquet key-value metadata holding the shard's bookkeeping
_SPLIT_ORDER = ("train", "validation", "test")
# Metadata columns (everything but the features): cheap to read for reports.
META_COLUMNS = (
    "id",
    "sentence",
    "text",
    "speaker",
    "source",
    "duration",
    "n_frames",
    "n_labels",
    "augmentation",
    "voice",
    "gender",
    "accent",
    "meta",
)


@dataclass(frozen=True)
class Reject:
    """One input left out of the store, and why."""

    split: str
    id: str
    audio: str  # the file (or "<bytes>", or "" for rendered audio)
    reason: str  # short category: "corrupt", "silent", "too long", "labels too long", ...
    detail: str = ""  # the specifics, in words


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("sentence", pa.string()),  # the transcript as the source gave it
            ("text", pa.string()),  # what was tokenized (normalised when configured)
            ("labels", pa.list_(pa.int32())),  # <|startoftranscript|> ... <|endoftext|>
            ("n_labels", pa.int32()),
            # float16 (n_mels, n_frames), C order: the frames of Whisper's log-mel that differ
            # from the pad value; frames n_frames..2999 all equal pad_value.
            ("features", pa.binary()),
            ("n_frames", pa.int32()),
            ("pad_value", pa.float32()),
            ("duration", pa.float32()),  # seconds of audio stored (after augmentation)
            ("speaker", pa.string()),
            ("source", pa.string()),
            ("augmentation", pa.string()),  # JSON of what was applied, "" when nothing
            ("voice", pa.string()),
            ("gender", pa.string()),
            ("accent", pa.string()),
            ("meta", pa.string()),  # JSON of the item's remaining metadata
        ]
    )


# --------------------------------------------------------------------------- writing


def shard_path(root: str | os.PathLike, split: str, index: int) -> Path:
    """``ROOT/<split>/shard-<index>.parquet``."""
    return Path(root) / split / f"shard-{index:05d}.parquet"


def remove_stale_tmp(root: str | os.PathLike) -> int:
    """Delete temporary files left by killed writers of this host; returns how many.

    Files of other hosts (several machines may write one store) and of live processes stay.
    """
    host = socket.gethostname()
    removed = 0
    for tmp in Path(root).glob("**/.*.tmp-*"):
        _, _, tail = tmp.name.rpartition(".tmp-")
        parts = tail.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_shard(path: Path, rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> None:
    """Write one shard atomically: ``rows`` (dicts with the schema's keys) + footer ``info``.

    ``info`` holds the shard's bookkeeping (config_hash, split, index, n_in, rejects...).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.table(columns, schema=schema)
    table = table.replace_schema_metadata({_FOOTER_KEY: json.dumps(info, ensure_ascii=False)})
    sink = pa.BufferOutputStream()
    # zstd: float16 log-mel compresses by ~15-25 %, text and labels by much more; level 3 keeps
    # writing far below the cost of computing the features.
    pq.write_table(table, sink, compression="zstd", compression_level=3, use_dictionary=False)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_shard_info(path: Path) -> dict[str, Any]:
    """The bookkeeping stored in a shard's footer; raises StoreError for a damaged file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: not a readable shard ({err}); delete it and re-run") from err
    raw = (meta.metadata or {}).get(_FOOTER_KEY)
    if raw is None:
        raise StoreError(f"{path}: not a whisper-sv shard (no {_FOOTER_KEY.decode()} footer)")
    info = json.loads(raw)
    info["rows"] = meta.num_rows
    return info


def _split_key(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split), "") if split in _SPLIT_ORDER else (len(_SPLIT_ORDER), split)


def shard_files(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Shard files present, per split, in split then shard order."""
    root = Path(root)
    out: dict[str, list[Path]] = {}
    if not root.is_dir():
        return out
    for folder in sorted(
        (p for p in root.iterdir() if p.is_dir()), key=lambda p: _split_key(p.name)
    ):
        files = sorted(folder.glob("shard-*.parquet"))
        if files:
            out[folder.name] = files
    return out


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """``manifest.json`` of ``root``, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: unreadable manifest ({err})") from err


def write_manifest(
    root: str | os.PathLike, base: Mapping[str, Any], listed: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Merge the footers of every shard present into ``manifest.json`` and ``rejects.tsv``.

    ``base`` holds what the shards do not know (config, model, source...); ``listed`` the
    number of inputs per split the writer saw, to record how many shards a complete split has.
    Values of a previous manifest are kept where ``base`` does not give them. Returns the
    manifest written.
    """
    root = Path(root)
    old = read_manifest(root) or {}
    shard_size = int(base.get("shard_size") or old.get("shard_size") or 0)
    splits: dict[str, Any] = {}
    rejects: list[Reject] = []
    want = base.get("config_hash") or old.get("config_hash")
    for split, files in shard_files(root).items():
        entry: dict[str, Any] = {
            "in": 0,
            "kept": 0,
            "rejected": 0,
            "seconds": 0.0,
            "hours": 0.0,
            "speakers": 0,
            "reasons": {},
            "shards": [],
        }
        speakers: dict[str, int] = {}
        known = {s["file"]: s for s in old.get("splits", {}).get(split, {}).get("shards", [])}
        for path in files:
            info = read_shard_info(path)
            if want and info.get("config_hash") != want:
                raise StoreError(
                    f"{path} was made for feature config {info.get('config_hash')}, the store "
                    f"is {want}: delete the shard or write to another store"
                )
            entry["in"] += int(info["n_in"])
            entry["kept"] += int(info["rows"])
            entry["rejected"] += len(info["rejects"])
            entry["seconds"] += float(info["seconds"])
            for spk, n in info["speakers"].items():
                speakers[spk] = speakers.get(spk, 0) + int(n)
            for rid, audio, reason, detail in info["rejects"]:
                rejects.append(Reject(split, rid, audio, reason, detail))
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
            entry["shards"].append(_shard_entry(path, int(info["rows"]), known.get(path.name)))
        entry["seconds"] = round(entry["seconds"], 3)
        entry["hours"] = round(entry["seconds"] / 3600, 4)
        entry["speakers"] = len(speakers)
        n_listed = (listed or {}).get(split, old.get("splits", {}).get(split, {}).get("listed"))
        if n_listed is not None and shard_size:
            entry["listed"] = int(n_listed)
            entry["shards_expected"] = -(-int(n_listed) // shard_size)
            entry["complete"] = len(files) == entry["shards_expected"]
        splits[split] = entry

    manifest = {
        **{k: v for k, v in old.items() if k not in ("splits", "updated")},
        **base,
        "created": old.get("created") or base.get("created") or _now(),
        "updated": _now(),
        "format_version": FORMAT_VERSION,
        "splits": splits,
    }
    atomic_write_bytes(root / REJECTS, _rejects_tsv(rejects).encode("utf-8"))
    atomic_write_bytes(
        root / MANIFEST, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    )
    return manifest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tsv_field(value: str) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _rejects_tsv(rejects: Sequence[Reject]) -> str:
    lines = ["split\tid\taudio\treason\tdetail"]
    for r in rejects:
        lines.append("\t".join(_tsv_field(v) for v in (r.split, r.id, r.audio, r.reason, r.detail)))
    return "\n".join(lines) + "\n"


def read_rejects(root: str | os.PathLike) -> list[Reject]:
    """The rows of ``rejects.tsv``."""
    path = Path(root) / REJECTS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        out.append(Reject(*parts[:5]))
    return out


# --------------------------------------------------------------------------- reading


def _expand(
    features: bytes,
    n_mels: int,
    n_frames: int,
    pad_value: float,
    dtype: Any,
    width: int = N_FRAMES,
) -> np.ndarray:
    """Stored bytes -> (n_mels, width) array of ``dtype``: the stored frames (cut at
    ``width``), then ``pad_value``; with the default width, as Whisper's extractor pads it."""
    out = np.full((n_mels, width), pad_value, dtype=dtype)
    if n_frames:
        stored = np.frombuffer(features, dtype=np.float16).reshape(n_mels, n_frames)
        out[:, : min(n_frames, width)] = stored[:, :width]
    return out


class FeatureStore:
    """Read a feature store; ``expect`` refuses one made for another feature config.

    >>> store = FeatureStore("stores/synthetic", expect=FeatureConfig.from_processor(proc))
    >>> store.splits(), store.num_rows("train")
    """

    def __init__(self, path: str | os.PathLike, *, expect: FeatureConfig | None = None) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(
                f"{self.path} is not a feature store (no {MANIFEST}); make one with "
                f"`whisper-sv features --out {self.path}`"
            )
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format {manifest.get('format_version')}, this version "
                f"reads {FORMAT_VERSION}; rebuild the store with `whisper-sv features`"
            )
        self.manifest: dict[str, Any] = manifest
        self.config: FeatureConfig = FeatureConfig.from_dict(manifest["config"])
        if expect is not None and expect.hash() != self.config.hash():
            raise StoreError(
                f"{self.path} was made for another feature config: store "
                f"{self.config.describe()} vs expected {expect.describe()} "
                f"(differs in {', '.join(self.config.differences(expect))}); rebuild it with "
                f"`whisper-sv features --model <the model> --out <new store>`"
            )

    def check_processor(self, processor: Any, n_mels: int | None = None) -> None:
        """Refuse a model whose processor gives other features or labels than the store's:
        other mel bins (``n_mels``: the model's, default the processor's) or another
        tokenizer (not checked for stores that recorded none). Text choices (normalize_text...)
        are the store's. Raises StoreError naming the difference and the fix."""
        have = self.config.n_mels
        want = int(processor.feature_extractor.feature_size) if n_mels is None else n_mels
        if have != want:
            raise StoreError(
                f"{self.path} was made for another model: it holds {have}-bin log-mel, the "
                f"model takes {want} (n_mels: {have} != {want}); rebuild the store with "
                f"`whisper-sv features --model <this model> --out <new store>`"
            )
        tokenizer = tokenizer_identity(processor.tokenizer)
        if self.config.tokenizer and tokenizer != self.config.tokenizer:
            raise StoreError(
                f"{self.path} was tokenized with another tokenizer than the model's "
                f"(tokenizer: {self.config.tokenizer!r} != {tokenizer!r}); rebuild the store "
                f"with `whisper-sv features --model <this model> --out <new store>`"
            )

    def splits(self) -> list[str]:
        """Splits with at least one shard, train/validation/test first."""
        return list(self.manifest["splits"])

    def _entry(self, split: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise StoreError(
                f"{self.path} has no split {split!r}; it has {self.splits()}"
            ) from None

    def num_rows(self, split: str) -> int:
        return int(self._entry(split)["kept"])

    def shards(self, split: str) -> list[Path]:
        return [self.path / split / s["file"] for s in self._entry(split)["shards"]]

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        """Every row: metadata, ``labels`` (list of int) and ``input_features`` float16
        (n_mels, 3000), padded exactly as WhisperFeatureExtractor pads."""
        import pyarrow.parquet as pq

        n_mels = self.config.n_mels
        for path in self.shards(split):
            for row in pq.read_table(path).to_pylist():
                row["input_features"] = _expand(
                    row.pop("features"), n_mels, row["n_frames"], row["pad_value"], np.float16
                )
                yield row

    def metadata(self, split: str, columns: Sequence[str] = META_COLUMNS) -> list[dict[str, Any]]:
        """Per-row metadata without reading the features (Parquet reads only ``columns``)."""
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for path in self.shards(split):
            rows.extend(pq.read_table(path, columns=list(columns)).to_pylist())
        return rows

    def rejects(self) -> list[Reject]:
        return read_rejects(self.path)

    def torch_dataset(self, split: str, *, cache_shards: int = 4) -> FeatureRows:
        """A map-style ``torch.utils.data.Dataset`` of ``{"input_features", "labels"}``."""
        dataset_class = _feature_dataset_class()
        return dataset_class(self.shards(split), self.config.n_mels, cache_shards=cache_shards)


class FeatureRows:
    """Rows of a split's shards as torch tensors, read shard by shard on demand.

    Item ``i``: ``{"input_features": float32 (n_mels, 3000), "labels": int64 (T,)}``. Decoded
    shards (trimmed float16, ~20 MB for 256 clips of 5 s) are kept in an LRU cache of
    ``cache_shards``; pair with :class:`ShardSampler` for shuffling that reads each shard
    once per epoch. Picklable, so DataLoader workers each keep their own cache.
    ``FeatureStore.torch_dataset`` returns it as :data:`FeatureDataset`, the same class with
    ``torch.utils.data.Dataset`` as a base (made on first use: importing torch costs seconds,
    and feature workers import this module without needing torch).
    """

    def __init__(self, shards: Sequence[Path], n_mels: int, *, cache_shards: int = 4) -> None:
        import pyarrow.parquet as pq

        self.shards = list(shards)
        self.n_mels = n_mels
        self.cache_shards = max(1, cache_shards)
        counts = [pq.read_metadata(p).num_rows for p in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row in shard) of dataset row ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range (0..{len(self) - 1})")
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return shard, index - int(self.offsets[shard])

    def _shard(self, k: int) -> dict[str, list]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        import pyarrow.parquet as pq

        cols = ["features", "n_frames", "pad_value", "labels", "duration"]
        data = pq.read_table(self.shards[k], columns=cols).to_pydict()
        self._cache[k] = data
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        k, i = self.locate(int(index))
        data = self._shard(k)
        feats = _expand(
            data["features"][i], self.n_mels, data["n_frames"][i], data["pad_value"][i], np.float32
        )
        return {
            "input_features": torch.from_numpy(feats),
            "labels": torch.tensor(data["labels"][i], dtype=torch.long),
        }

    def audio_frames(self, index: int) -> tuple[np.ndarray, float, list[int]]:
        """Row ``index`` as the log-mel of its audio alone: float32 (n_mels, F) with one frame
        per 10 ms hop of the clip (F = duration x 100), so clips placed one after another line
        up as their joined audio would; then the row's pad value and its label ids."""
        k, i = self.locate(int(index))
        data = self._shard(k)
        hops = max(1, round(float(data["duration"][i]) * SAMPLE_RATE / HOP_LENGTH))
        pad = float(data["pad_value"][i])
        # Stored frames run past the last hop (the STFT window's half) or stop early (silent
        # tail trimmed, restored as the pad value): cut or pad them to the hops.
        feats = _expand(
            data["features"][i], self.n_mels, data["n_frames"][i], pad, np.float32, width=hops
        )
        return feats, pad, list(data["labels"][i])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # each DataLoader worker fills its own
        return state


def _feature_dataset_class() -> type:
    cls = globals().get("_FEATURE_DATASET")
    if cls is None:
        from torch.utils.data import Dataset

        cls = type(
            "FeatureDataset",
            (FeatureRows, Dataset),
            {"__module__": __name__, "__doc__": FeatureRows.__doc__},
        )
        globals()["_FEATURE_DATASET"] = cls
    return cls


def __getattr__(name: str) -> Any:
    # ``store.FeatureDataset`` (and unpickling one in a DataLoader worker) builds the class.
    if name == "FeatureDataset":
        return _feature_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ShardSampler:
    """Shuffles shard order, then rows within each shard: each shard is read once per epoch.

    Use as ``DataLoader(dataset, sampler=ShardSampler(dataset, seed=s), ...)``; call
    ``set_epoch(e)`` for a new order each epoch. Rows of a shard are 256 consecutive inputs of
    the source, so batches mix within a shard only; shard shuffling mixes across epochs.
    """

    def __init__(self, dataset: FeatureRows, *, seed: int = 0, shuffle: bool = True) -> None:
        self.offsets = dataset.offsets
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from range(len(self))
            return
        yield from (int(r) for r in shard_permutation(self.offsets, self.seed, self.epoch))


def shard_permutation(offsets: Sequence[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Row order of one epoch: shards in random order, rows shuffled within each shard.

    A pure function of (seed, epoch), so each shard is read once per epoch and a resumed run
    can rebuild any epoch's order. ``offsets`` are the shards' first rows plus the total.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    shards = np.arange(len(offsets) - 1)
    rng.shuffle(shards)
    parts = []
    for k in shards:
        rows = np.arange(offsets[k], offsets[k + 1])
        rng.shuffle(rows)
        parts.append(rows)
    return np.concatenate(parts) if parts else np.arange(0)


def collate(
    batch: Sequence[Mapping[str, Any]], pad_token_id: int = -100
) -> dict[str, torch.Tensor]:
    """Stack dataset items: ``input_features`` float32 (B, n_mels, 3000), ``labels`` int64
    (B, T) right-padded with ``pad_token_id`` (-100: ignored by the loss)."""
    import torch

    if not batch:
        raise ValueError("collate got an empty batch")
    feats = torch.stack([torch.as_tensor(b["input_features"], dtype=torch.float32) for b in batch])
    labels = pad_labels([b["labels"] for b in batch], pad_token_id)
    return {"input_features": feats, "labels": labels}


def pad_labels(labels: Sequence[Any], pad_token_id: int = -100) -> torch.Tensor:
    """Label id sequences as one int64 (B, T) tensor, right-padded with ``pad_token_id``
    (-100: ignored by the loss)."""
    import torch

    rows = [torch.as_tensor(x, dtype=torch.long) for x in labels]
    width = max(len(x) for x in rows)
    out = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, x in enumerate(rows):
        out[i, : len(x)] = x
    return out


# --------------------------------------------------------------------------- checks


def open_store(path: str | os.PathLike) -> FeatureStore:
    """The feature store at ``path``, checked for a non-empty train split."""
    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"feature store {p} does not exist; make one with `whisper-sv features --out {p}`"
        )
    try:
        store = FeatureStore(p)
    except (KeyError, TypeError) as e:
        raise StoreError(f"{p}: damaged manifest.json ({e}); rebuild the store") from e
    if "train" not in store.splits() or store.num_rows("train") == 0:
        raise StoreError(f"{p} has no train clips (splits: {store.splits()}); nothing to train on")
    for split in ("train", "validation"):
        if split not in store.splits():
            continue
        for shard in store.shards(split):  # footers only: cheap, and finds a damaged file now
            if not shard.is_file():
                raise StoreError(f"{shard} is missing; re-run `whisper-sv features` on {p}")
            read_shard_info(shard)
    return store


def _shard_entry(path: Path, rows: int, old: Mapping[str, Any] | None) -> dict[str, Any]:
    """A shard's manifest entry: name, rows and the sha256 of its bytes (taken from ``old``,
    the previous manifest's entry, while the file's size and time are the same: each shard is
    read once)."""
    st = path.stat()
    same = (
        old is not None and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
    )
    digest = old["sha256"] if same and old.get("sha256") else file_digest(path)
    return {
        "file": path.name,
        "rows": rows,
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest,
    }


def store_id(store: FeatureStore) -> str:
    """Identity of a store's content: feature config hash + every shard's name, rows and bytes
    (sha256). The bytes count: two stores of the same clips with other texts have the same
    names and rows, and caches keyed by this id (encoder outputs with their labels) would
    otherwise hand one store's labels to the other."""
    m = store.manifest
    keys = ("file", "rows", "sha256")
    data = {
        "config": store.config.hash(),
        "splits": {
            s: [{k: e[k] for k in keys if k in e} for e in m["splits"][s].get("shards", [])]
            for s in store.splits()
        },
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
