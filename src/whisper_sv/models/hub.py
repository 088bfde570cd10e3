"""Models from the Hugging Face hub at a revision: ``ORG/NAME[@REVISION]``, offline-aware.

A revision is a branch, a tag or a commit hash, as the hub names them (KBLab publishes the
style variants of KB-Whisper as revisions: ``standard``, ``subtitle``, ``strict``). Without
one, the default branch. The hub client (``snapshot_download``) resolves it: from the hub
cache first (``refs/<revision>`` holds the commit, ``snapshots/<commit>/`` the files), then,
when online, by downloading the model's files once.

A conversion of a snapshot (CTranslate2 for a transformers-only revision, transformers for a
CTranslate2-only one) is cached under ``$WHISPER_SV_CACHE/hub/models--ORG--NAME/``, named by
the commit hash: a commit never changes, so its conversion is never redone, and a branch that
moves to a new commit gets a new one. The hub cache itself is left as the hub client wrote it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from whisper_sv.core.fsutil import cache_dir
from whisper_sv.models.folders import is_ct2_dir, is_transformers_dir, is_whisper_dir

# The files a Whisper model needs, in either format; a repo's other files (ONNX, ggml,
# checkpoints of other tools) are never downloaded.
MODEL_FILES = ["*.json", "*.txt", "*.safetensors", "model.bin", "*.model"]
DEFAULT_BRANCH = "main"
# A hub name part: letters, digits, - _ . (no leading "." or "~": those are local paths).
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_HUB_REF = re.compile(
    rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9_.][A-Za-z0-9_./-]*))?"
)


@dataclass(frozen=True)
class HubModel:
    """A model on the hub at a revision."""

    repo_id: str  # "ORG/NAME", e.g. "KBLab/kb-whisper-small"
    revision: str | None = None  # branch, tag or commit hash; None: the default branch

    @property
    def ref(self) -> str:
        """The model reference that names it: ``ORG/NAME`` or ``ORG/NAME@REVISION``."""
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass(frozen=True)
class HubSnapshot:
    """The local files of a hub model at one commit."""

    model: HubModel  # what was asked for
    folder: Path  # HF_HUB_CACHE/models--ORG--NAME/snapshots/<commit>
    commit: str  # the commit hash the revision stands for

    def converted_dir(self, kind: str) -> Path:
        """Where this commit's conversion to ``kind`` ("ct2" or "hf") is cached."""
        return hub_conversions_dir(self.model.repo_id) / f"{self.commit}-{kind}"


def parse_hub_ref(ref: str) -> HubModel | None:
    """``ORG/NAME`` or ``ORG/NAME@REVISION`` as a :class:`HubModel`; None for anything else."""
    m = _HUB_REF.fullmatch(ref)
    if m is None:
        return None
    revision = m.group("revision")
    if revision is not None and (".." in revision or revision.endswith("/")):
        return None  # git refuses such names; a typo, not a revision
    return HubModel(m.group("repo"), revision)


def hub_conversions_dir(repo_id: str) -> Path:
    """``$WHISPER_SV_CACHE/hub/models--ORG--NAME``: the conversions of a hub model's commits."""
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / "hub" / repo_folder_name(repo_id=repo_id, repo_type="model")


def hub_offline() -> bool:
    """Offline as the hub client decides (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, read when it
    was imported) or as HF_HUB_OFFLINE says now (set later, e.g. by a test)."""
    from huggingface_hub import is_offline_mode

    now = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return now or is_offline_mode()


def hub_snapshot(model: HubModel | str) -> HubSnapshot:
    """The local snapshot of ``model`` (from the hub cache, else downloaded once).

    Offline (HF_HUB_OFFLINE=1 or no network) a revision that is not cached is a ValueError
    that says how to get it and names the revisions that are cached.
    """
    from huggingface_hub import snapshot_download

    if isinstance(model, str):
        parsed = parse_hub_ref(model)
        if parsed is None:
            raise ValueError(f"{model!r} is not a hub model; write ORG/NAME or ORG/NAME@REVISION")
        model = parsed
    try:
        path = snapshot_download(
            model.repo_id,
            revision=model.revision,
            allow_patterns=MODEL_FILES,
            local_files_only=True,
        )
    except Exception:  # not cached (the hub client raises several kinds here)
        if hub_offline():
            raise ValueError(_not_cached(model)) from None
        try:
            path = snapshot_download(
                model.repo_id, revision=model.revision, allow_patterns=MODEL_FILES
            )
        except Exception as e:  # no such repo or revision, no network, no access
            raise ValueError(
                f"hub model {model.ref!r} could not be downloaded ({type(e).__name__}: {e}); "
                "check the name and revision, the network and `hf auth login`, or use "
                f"bundled:base.{_cached_note(model)}"
            ) from e
    folder = Path(path)
    if not (is_transformers_dir(folder) or is_ct2_dir(folder)):
        raise ValueError(
            f"hub model {model.ref!r} holds no Whisper model (no model.safetensors or "
            f"model.bin in {folder}); check the name and revision"
        )
    # The hub cache keeps each commit in snapshots/<commit hash>.
    return HubSnapshot(model=model, folder=folder, commit=folder.name)


def _not_cached(model: HubModel) -> str:
    return (
        f"hub model {model.ref!r} is not available offline.{_cached_note(model)} Run the command "
        "once online (HF_HUB_OFFLINE unset) to download it, or use bundled:base, a local "
        "transformers or CTranslate2 folder, or a run folder."
    )


def _cached_note(model: HubModel) -> str:
    cached = cached_revisions(model.repo_id)
    if cached:
        return f" The hub cache holds {model.repo_id} at: {', '.join(cached)}."
    return f" The hub cache ({_hub_cache()}) holds no revision of {model.repo_id}."


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_revisions(repo_id: str) -> list[str]:
    """The names (branches, tags) under which the hub cache holds ``repo_id``, sorted."""
    return sorted({r for rev in _cached_repo_revisions(repo_id) for r in rev.refs})


def _scan_hub_cache() -> list:
    """The hub cache's repos (``CachedRepoInfo``); none when there is no cache."""
    from huggingface_hub import constants, scan_cache_dir

    try:
        # The folder snapshot_download reads (constants.HF_HUB_CACHE at call time):
        # scan_cache_dir's own default is a copy taken when it was first imported.
        return list(scan_cache_dir(constants.HF_HUB_CACHE).repos)
    except Exception:  # no hub cache at all (CacheNotFound) or an unreadable one
        return []


def _cached_repo_revisions(repo_id: str) -> list:
    repos = [r for r in _scan_hub_cache() if r.repo_type == "model" and r.repo_id == repo_id]
    return [rev for repo in repos for rev in repo.revisions]


def cached_hub_models() -> list[str]:
    """Every Whisper model the hub cache holds, as references: ``ORG/NAME`` for the default
    branch, ``ORG/NAME@REF`` for other branches and tags; sorted."""
    found = set()
    for repo in _scan_hub_cache():
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if rev.refs and is_whisper_dir(Path(rev.snapshot_path)):
                for name in rev.refs:
                    found.add(HubModel(repo.repo_id, None if name == DEFAULT_BRANCH else name).ref)
    return sorted(found)
