"""ESMM: purchase = click x purchase-given-click over the whole impression space (Ma et al., SIGIR 2018).

A CVR model trained only on clicked rows is biased (sample selection) and starved of data. ESMM
instead trains the CVR tower through pCTCVR = pCTR * pCVR against the purchase label, which every
impression row carries, so the `purchase` head is the pCTCVR logit and the CVR tower is a latent.

Base: shared embedding + one shared `mlp(expert_dims)` bottom (SharedBottom's), rather than the
paper's embedding-only sharing, so that against shared_bottom only the CTCVR factorisation differs.
The CTR tower is owned by `click` and the CVR tower by `purchase`; the CTR tower also learns from the
purchase loss, as in the paper.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from core.errors import InputError
from tasks.models.base import MultiTaskModel, PerTask, mlp, tower
from tasks.models.mmoe import expert_width


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)), finite and with gradients for any finite logits.

    Both log p and log(1 - p) stay in log space: 1 - s(a)s(b) = s(-a) + s(a)s(-b), so no clamp is
    needed even where p rounds to 0 or 1.
    """
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr_logit), F.logsigmoid(ctr_logit) + F.logsigmoid(-cvr_logit))
    return log_p - log_not_p


class ESMM(MultiTaskModel):
    def __init__(self, buckets: Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0, first_order: bool = True, embedding_init_std: float = 0.0,
                 interactions: bool = True, id_dropout: float | Sequence[float] = 0.0) -> None:
        if not {"click", "purchase"} <= set(tasks):
            raise InputError(f"model=esmm needs tasks click and purchase; got {', '.join(tasks) or 'none'}")
        super().__init__(buckets, tasks, embedding_dim, expert_dims, tower_dims, dropout, first_order,
                         embedding_init_std, interactions, id_dropout)
        self.bottom = mlp(self.embedding.output_dim, expert_dims, dropout)
        width = expert_width(self.embedding.output_dim, expert_dims)
        # towers["click"] is the CTR tower, towers["purchase"] the CVR tower (its output is not a head).
        self.towers = PerTask({t: tower(width, tower_dims, dropout) for t in self.task_names})

    def deep(self, embedded: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw tower logits: CTR under `click`, CVR under `purchase`."""
        shared = self.bottom(embedded)
        return {t: head(shared).squeeze(-1) for t, head in self.towers.items()}

    def link(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = dict(outputs)
        outputs["purchase"] = ctcvr_logit(outputs["click"], outputs["purchase"])
        return {t: outputs[t] for t in self.task_names}

    def additive_tasks(self) -> list[str]:
        return [t for t in super().additive_tasks() if t != "purchase"]  # purchase = ctcvr(click, cvr)

    def calibratable_tasks(self) -> list[str]:
        return [t for t in self.task_names if t not in ("click", "purchase")]  # purchase = ctcvr(click, cvr)

    def raw_priors(self, base_rates: Mapping[str, float]) -> dict[str, float]:
        """The purchase tower is p(purchase | click): its prior is the purchase rate over the click rate."""
        rates = dict(base_rates)
        if "purchase" in rates and "click" in rates:
            rates["purchase"] = min(max(rates["purchase"] / rates["click"], 1e-4), 1 - 1e-4)
        return super().raw_priors(rates)

    def cvr_probability(self, features: torch.Tensor) -> torch.Tensor:
        """p(purchase | click, x): the latent the purchase head factorises through, for analysis."""
        return torch.sigmoid(self.raw(features)["purchase"])
