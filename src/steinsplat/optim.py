"""Adam for the Gaussians on a CPU, without importing torch._dynamo.

`torch.optim.Optimizer.__init__` imports torch._dynamo (through `torch._disable_dynamo` on
`add_param_group`): 0.8 s on a 2-core CPU, a third of the time to a run's first step. This class
does the same update as torch.optim.Adam's default on a CPU (the single-tensor path: no amsgrad,
weight decay, maximize, foreach or fused), in the same order on the same float values, so the
numbers are bit-identical (tests/test_optim.py), and it holds its state as torch's does
(`state[param]` with "step", "exp_avg", "exp_avg_sq"; `param_groups` of one dict each), which is
what gsplat's densification strategies and steinsplat's checkpoints read and rewrite. On CUDA,
`densify.per_param_optimizers` keeps torch.optim.Adam (its foreach kernels).

One update, for gradient g at step k (beta1, beta2, eps, lr from the group):
  1. m <- m + (1 - beta1) (g - m)                         (lerp)
  2. v <- beta2 v + (1 - beta2) g^2
  3. c1 = 1 - beta1^k,  c2 = 1 - beta2^k                  (Python floats)
  4. p <- p - (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
from torch import Tensor


class Adam:
    """torch.optim.Adam's CPU update and state layout (module docstring), for groups of plain tensors."""

    def __init__(self, param_groups: Iterable[dict[str, Any]], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not lr >= 0.0 or not eps >= 0.0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: need lr >= 0, eps >= 0 and betas in [0, 1), got lr={lr}, eps={eps}, betas={betas}")
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
        self.param_groups: list[dict[str, Any]] = []
        for g in param_groups:
            group = {**self.defaults, **g, "params": list(g["params"])}
            self.param_groups.append(group)
        self.state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64
                                                 else torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                m.lerp_(grad, 1 - beta1)  # 1.
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # 2.
                k = step_t.item()
                c1, c2 = 1 - beta1**k, 1 - beta2**k  # 3.
                denom = (v.sqrt() / c2**0.5).add_(eps)
                p.addcdiv_(m, denom, value=-(lr / c1))  # 4.

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()


def adam(params: Iterable[Any], **kwargs: Any) -> Any:
    """An Adam over `params` (tensors, or groups as dicts): this module's on a CPU, torch.optim.Adam elsewhere."""
    params = list(params)
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
    if all(t.device.type == "cpu" for t in tensors):
        return Adam([g if isinstance(g, dict) else {"params": [g]} for g in params], **kwargs)
    return torch.optim.Adam(params, **kwargs)
