r"""Adam with a lean fused step: the same update, state and checkpoints as ``torch.optim.Adam``.

    m_t = b1 m_{t-1} + (1 - b1) g_t,   v_t = b2 v_{t-1} + (1 - b2) g_t^2,
    theta_t = theta_{t-1} - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

PyTorch's ``Adam(fused=True).step`` spends most of a small model's step in Python (grouping
tensors by device and dtype, checking flags): about 0.4 ms per step for the 2-D EIMs' six
parameter tensors on a 2-core CPU, against 0.03 ms for the fused kernel itself
(``bench/toy2d_steps.py`` profile). :class:`Adam` keeps the lists of parameters and state
tensors and calls the same kernel (``torch._fused_adam_``) directly, so its parameters and
state are bit-identical to ``torch.optim.Adam(fused=True)`` (tested). Anything the lean path
does not cover (AMSGrad, maximize, a differentiable or capturable optimiser, gradient scaling
by a ``GradScaler``, parameters on several devices or of several dtypes, sparse gradients, a
device without the fused kernel) falls back to ``torch.optim.Adam.step``.

:meth:`Adam.step_unless` skips a step on device when a flag is set (a non-finite loss), so
training can stop at the end of a block of steps with the weights of the last good step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Adam"]


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` whose ``step`` calls the fused kernel directly.

    A subclass: schedulers, ``state_dict``/``load_state_dict`` and checkpoints are those of
    ``torch.optim.Adam``. Construct it with ``fused=True`` (the default here); with
    ``fused=False`` it is plain ``torch.optim.Adam``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused, **kwargs)

    @staticmethod
    def _lean(group: dict) -> bool:
        return bool(group["fused"]) and not (
            group["amsgrad"]
            or group["maximize"]
            or group["capturable"]
            or group["differentiable"]
            or group.get("decoupled_weight_decay", False)
        )

    def _group_lists(self, group: dict):
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # exactly as torch.optim.Adam initialises a fused step's state
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure=None, **kwargs):
        if kwargs or not all(self._lean(g) for g in self.param_groups):
            return super().step(closure, **kwargs)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._lean_step(None)
        return loss

    @torch.no_grad()
    def step_unless(self, found_inf: Tensor) -> None:
        """One step, skipped where ``found_inf`` (a 0-d float tensor on the parameters' device) is
        nonzero: parameters, moments and step counts stay as they were, without a host sync
        (the fused kernel's own skip, as a ``GradScaler`` uses it)."""
        if all(self._lean(g) for g in self.param_groups):
            self._lean_step(found_inf)
        elif not bool(found_inf):
            self.step()

    def _lean_step(self, found_inf: Tensor | None) -> None:
        lists = [self._group_lists(g) for g in self.param_groups]
        for _group, (params, _grads, _exp_avgs, _exp_avg_sqs, _steps) in zip(self.param_groups, lists):
            if not params:
                continue
            first = params[0]
            if any(p.device != first.device or p.dtype != first.dtype or p.grad.is_sparse for p in params):
                if found_inf is None or not bool(found_inf):
                    super().step(None)  # state already initialised the same way; no closure twice
                return
        for group, (params, grads, exp_avgs, exp_avg_sqs, steps) in zip(self.param_groups, lists):
            if not params:
                continue
            lr = group["lr"]
            if isinstance(lr, torch.Tensor) and lr.device.type == "cpu" and params[0].device.type != "cpu":
                lr = lr.item()
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                amsgrad=False,
                maximize=False,
                found_inf=found_inf,
            )
            if found_inf is not None:
                torch._foreach_sub_(steps, [found_inf] * len(steps))
