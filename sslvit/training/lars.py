"""LARS (You et al., 2017) in the form MAE's linear probe uses (MoCo v3's): SGD with momentum whose
update of every weight matrix is rescaled by a trust ratio; 1-D parameters (biases, norms) take the
plain momentum step and no weight decay.

For a parameter ``p`` with more than one dimension and gradient ``g``::

    d = g + weight_decay * p
    d = d * trust_coefficient * |p| / |d|     (when |p| > 0 and |d| > 0; else d unchanged)
    mu = momentum * mu + d;  p = p - lr * mu

and ``d = g`` for the others.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """LARS without rate scaling or weight decay for parameters of one dimension or fewer."""

    def __init__(self, params: Iterable[torch.nn.Parameter] | Iterable[dict], lr: float = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"LARS: lr {lr} and weight_decay {weight_decay} must be >= 0, momentum {momentum} "
                             f"in [0, 1), trust_coefficient {trust_coefficient} > 0")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        if closure is not None:
            raise ValueError("LARS.step takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = group["trust_coefficient"] * p_norm / u_norm
                    ratio = torch.where((p_norm > 0) & (u_norm > 0), trust, torch.ones_like(p_norm))
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
