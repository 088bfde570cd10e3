"""features -> train -> evaluate -> export as one idempotent, schedulable command.

``whisper-sv pipeline --config pipeline.yaml`` runs each stage only when its output is missing
or older than its input, so a cron job can call it every night: nothing happens until the source
grows; then the store gains shards, a new run is trained on the new store content (one run
folder per store content, named by its id), evaluated and exported. Re-running after a crash
resumes the interrupted stage (the store skips finished shards; training resumes from its last
checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_sv.core.fsutil import atomic_write_text, newer
from whisper_sv.models.references import DEFAULT_MODEL

log = logging.getLogger(__name__)

__all__ = ["PipelineConfig", "StageReport", "run_pipeline"]


@dataclass(frozen=True)
class PipelineConfig:
    source: str = "synthetic"  # source spec: synthetic | commonvoice:DIR | manifest:TSV | hf:NAME
    source_options: dict = field(default_factory=dict)  # that source's options (e.g. train: 400)
    store: str = "stores/sv"  # feature store folder (or shared path many machines write)
    runs: str = "runs/sv"  # parent folder; each store content gets RUNS/<store id>/
    model: str = DEFAULT_MODEL  # pretrained model reference
    features: dict = field(default_factory=dict)  # BuildOptions fields (workers, limit, ...)
    train: dict = field(default_factory=dict)  # TrainConfig fields (lr, max_steps, ...)
    eval_split: str = "test"  # store split scored after training
    push_to_hub: str = ""  # hub repo id to publish best/ + model card to ("" = don't)
    # Export and publish even a run whose best/ did not keep its real-speech guards (train:
    # guards). Without it such a run is kept for inspection but never promoted.
    force: bool = False

    def __post_init__(self) -> None:
        if not self.store or not self.runs:
            raise ValueError("store and runs must name folders")
        if self.push_to_hub and "/" not in self.push_to_hub:
            raise ValueError(f"push_to_hub must be OWNER/NAME, got {self.push_to_hub!r}")


@dataclass(frozen=True)
class StageReport:
    stage: str  # features | train | evaluate | promote | export | push
    ran: bool  # False: output was up to date, skipped
    seconds: float
    detail: str  # one line for the summary
    refused: bool = False  # the stage stopped the pipeline (promote: guards regressed)


def promotion_refusal(run: Path) -> str:
    """Why ``run`` must not be exported or published ("" when it may be): its best/ regressed
    on a real-speech guard, no guard was out of domain (general Swedish unchecked), or no
    fine-tuned model kept the guards (best/ is the start model).
    Runs trained without guards have no RUN/guards.json and are not judged here."""
    from whisper_sv.train.selection import GUARDS_JSON

    path = run / GUARDS_JSON
    if not path.is_file():
        return ""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("regressed"):
        return "best/ regressed on real-speech guards: " + "; ".join(data["regressed"])
    if data.get("kept_start"):
        raw = data.get("best_validation_any_guards", {})
        return (
            f"no fine-tuned model kept its real-speech guards (the best validation model, "
            f"step {raw.get('step')}, regressed: {'; '.join(raw.get('regressed') or ['-'])}); "
            "best/ is the start model"
        )
    if data.get("guards") and "out" not in data.get("domains", {}).values():
        # Guards cut from the training recordings measure the training speakers: a run can
        # pass them all and still be worse for everyone else (docs/experiments.md, section 9).
        return (
            "no guard is out of domain, so general Swedish was never checked; add a guard of "
            "speakers and recordings training never had (domain: out, e.g. cv-dev)"
        )
    return ""


def check_hub_reachable(repo: str) -> None:
    """Fail before any work when publishing cannot succeed (offline, or no token)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ValueError(
            f"push_to_hub {repo}: HF_HUB_OFFLINE is set; unset it (and log in with "
            "`hf auth login`) or drop push_to_hub"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().whoami()
    except HfHubHTTPError as err:
        raise ValueError(f"push_to_hub {repo}: not logged in ({err}); run `hf auth login`") from err
    except Exception as err:  # connection errors come in many classes (requests, httpx, OSError)
        raise ValueError(
            f"push_to_hub {repo}: the Hugging Face Hub cannot be reached ({type(err).__name__}); "
            "check the network or drop push_to_hub"
        ) from err


def run_pipeline(config: PipelineConfig) -> list[StageReport]:
    """Run the stages that are out of date; return what each did."""
    from whisper_sv.core.config import from_mapping
    from whisper_sv.data.features import BuildOptions, build_store
    from whisper_sv.data.sources import open_source
    from whisper_sv.data.store import open_store, store_id
    from whisper_sv.train.run import TrainConfig

    # Every option is validated before the first stage, so a typo fails in a second.
    build_opts = from_mapping(BuildOptions, {"model": config.model, **config.features})
    # Exporting is the pipeline's own stage, after the guard check (promote).
    train_cfg = from_mapping(TrainConfig, {**config.train, "export_ct2": False})
    source = open_source(config.source, **config.source_options)
    if config.push_to_hub:
        check_hub_reachable(config.push_to_hub)

    reports: list[StageReport] = []

    t = time.perf_counter()
    summary = build_store(source, config.store, build_opts)
    reports.append(
        StageReport(
            "features",
            summary.shards_written > 0,
            time.perf_counter() - t,
            f"{summary.shards_written} shard(s) written, {summary.shards_skipped} up to date",
        )
    )

    store = open_store(config.store)
    run = Path(config.runs) / store_id(store)
    reports.append(_train_stage(config, run, train_cfg))
    reports.append(_evaluate_stage(run, store, config.eval_split))
    refusal = promotion_refusal(run)
    if refusal:
        detail = f"{run}: {refusal}"
        if not config.force:
            log.error("not exporting or publishing %s: %s (force: true overrides)", run, refusal)
            reports.append(StageReport("promote", False, 0.0, "refused: " + detail, refused=True))
            return reports
        reports.append(StageReport("promote", True, 0.0, "forced: " + detail))
    reports.append(_export_stage(run))
    if config.push_to_hub:
        t = time.perf_counter()
        url = push_to_hub(run, config.push_to_hub)
        reports.append(StageReport("push", True, time.perf_counter() - t, url))
    return reports


def _train_stage(config: PipelineConfig, run: Path, train_cfg: Any) -> StageReport:
    """Train the run of this store unless it finished (``RUN/DONE``)."""
    from whisper_sv.train.run import train

    finished = run / "DONE"
    if finished.exists():
        return StageReport("train", False, 0.0, f"{run} is up to date")
    t = time.perf_counter()
    result = train(config.store, run, model=config.model, config=train_cfg)
    atomic_write_text(finished, json.dumps({"step": result.step}) + "\n")
    detail = f"{run}: step {result.step}, best validation WER {result.best_wer}"
    return StageReport("train", True, time.perf_counter() - t, detail)


def _evaluate_stage(run: Path, store: Any, split: str) -> StageReport:
    """Score the run on ``split`` unless its scores are newer than its metrics."""
    eval_json = run / f"eval-{split}.json"
    if split not in store.splits():
        return StageReport("evaluate", False, 0.0, f"no {split} split")
    if eval_json.exists() and not newer(run / "metrics.csv", eval_json):
        return StageReport("evaluate", False, 0.0, f"{eval_json} is up to date")
    t = time.perf_counter()
    res = evaluate_split(str(run), store, split)
    atomic_write_text(eval_json, json.dumps(res, indent=2))
    detail = f"{split}: WER {res['wer']:.1f}% CER {res['cer']:.1f}% (n={res['n']})"
    return StageReport("evaluate", True, time.perf_counter() - t, detail)


def _export_stage(run: Path) -> StageReport:
    """Export best/ to CTranslate2 unless ``ct2/`` is newer than it."""
    from whisper_sv.train.export import export_run

    ct2 = run / "ct2" / "model.bin"
    if ct2.exists() and not newer(run / "best" / "model.safetensors", ct2):
        return StageReport("export", False, 0.0, f"{ct2.parent} is up to date")
    t = time.perf_counter()
    out = export_run(run)
    return StageReport("export", True, time.perf_counter() - t, str(out))


def evaluate_split(model_ref: str, store: Any, split: str, batch_size: int = 16) -> dict:
    """WER/CER of a model on a store split (the store's own features and labels)."""
    from whisper_sv.train.scoring import evaluate_split as score_split

    res = score_split(model_ref, store, split, batch_size=batch_size)
    return {
        "model": model_ref,
        "split": split,
        "wer": res.wer,
        "cer": res.cer,
        "val_loss": res.val_loss,
        "n": res.n,
        "seconds": res.seconds,
    }


def push_to_hub(run: Path, repo: str) -> str:
    """Publish the run's best model (transformers), its CTranslate2 export and card."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(run / "best"), repo_id=repo, commit_message="best model")
    card = run / "model_card.md"
    if card.exists():
        api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo)
    if (run / "ct2").is_dir():
        api.upload_folder(folder_path=str(run / "ct2"), path_in_repo="ct2", repo_id=repo)
    return f"https://huggingface.co/{repo}"
