"""The training objective: the labels' cross-entropy plus the anti-forgetting terms.

Fine-tuning on a narrow domain (synthetic voices, a few real speakers) moves the decoder away
from what the start model knew about Swedish in general. Two terms hold it back, each a
``TrainConfig`` option measured in docs/experiments.md (section 9):

- **L2-SP** (Li, Grandvalet & Davoine 2018): ``l2sp / 2 * ||w - w_start||^2`` over the trainable
  weights, a pull toward the start model rather than toward zero;
- **distillation as in Learning without Forgetting** (Li & Hoiem 2016): a share ``distill`` of
  the loss is the KL divergence from the start model's next-token distribution, computed on
  the same windows, at temperature ``distill_temperature`` (Hinton et al. 2015's T^2 scaling).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from whisper_sv.train.config import TrainConfig

__all__ = ["Objective"]

IGNORE = -100  # label positions without a loss (padding, prompts)


class Objective:
    """``objective(model, inputs, forward)`` -> (loss to minimise, the labels' cross-entropy).

    Made from the start model *before* a checkpoint is loaded, so a resumed run keeps the same
    anchor weights and teacher.
    """

    def __init__(self, cfg: TrainConfig, start_model: Any) -> None:
        from whisper_sv.train.setup import trainable_params

        self.l2sp, self.distill, self.temperature = cfg.l2sp, cfg.distill, cfg.distill_temperature
        self.anchor = (
            {n: p.detach().clone() for n, p in trainable_params(start_model).items()}
            if self.l2sp
            else {}
        )
        self.teacher = None
        if self.distill:
            self.teacher = copy.deepcopy(start_model).eval().requires_grad_(False)

    @property
    def plain(self) -> bool:
        """Whether the loss is the cross-entropy alone."""
        return not self.l2sp and not self.distill

    def __call__(
        self,
        model: Any,
        base: Any,
        inputs: dict[str, Any],
        forward: Any,
        anchor: torch.Tensor | None = None,
    ) -> tuple:
        """``forward(net, inputs)`` runs a network on the batch; ``base`` is ``model``
        unwrapped (its parameter names are the anchor's). ``anchor``: (batch,) bool, rows
        trained on the teacher's distribution alone (TrainConfig.anchor_sources); the
        cross-entropy returned is then the other rows'."""
        out = forward(model, inputs)
        ce = out.loss
        loss = ce
        if self.teacher is not None:
            import torch

            with torch.no_grad():
                soft = forward(self.teacher, inputs).logits
            labels = inputs["labels"]
            if anchor is not None and bool(anchor.any()):
                return self._anchored(out.logits, soft, labels, anchor.to(labels.device)), ce
            kl = distillation_kl(out.logits, soft, labels, self.temperature)
            loss = (1.0 - self.distill) * ce + self.distill * kl
        if self.anchor:
            loss = loss + 0.5 * self.l2sp * _sq_distance(base, self.anchor)
        return loss, ce

    def _anchored(self, logits: Any, soft: Any, labels: Any, anchor: Any) -> Any:
        """The loss with anchor rows: per labelled token, ``(1 - distill) * CE + distill * KL``
        on the other rows and the KL alone on anchor rows, averaged over every token."""
        import torch
        import torch.nn.functional as F

        mask = labels != IGNORE
        t = self.temperature
        s_log = F.log_softmax(logits[mask].float() / t, dim=-1)
        t_log = F.log_softmax(soft[mask].float() / t, dim=-1)
        kl = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1) * t * t
        ce = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
        is_anchor = anchor[:, None].expand_as(labels)[mask]
        per_token = torch.where(is_anchor, kl, (1.0 - self.distill) * ce + self.distill * kl)
        return per_token.mean()


def distillation_kl(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over labelled positions of KL(teacher || student) at ``temperature``, times T^2.

    student, teacher: (batch, positions, vocab) logits; labels: (batch, positions), IGNORE
    where no loss is taken."""
    import torch.nn.functional as F

    t = temperature
    mask = labels != IGNORE
    s_log = F.log_softmax(student[mask].float() / t, dim=-1)
    t_log = F.log_softmax(teacher[mask].float() / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean")
    return kl * t * t


def _sq_distance(model: Any, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    params = dict(model.named_parameters())
    total = None
    for name, start in anchor.items():
        p = params[name]
        d = (p - start.to(p.device)).pow(2).sum()
        total = d if total is None else total + d
    return total
