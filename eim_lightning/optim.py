r"""Adam with a lean fused step: the same update, state and checkpoints as ``torch.optim.Adam``.

    m_t = b1 m_{t-1} + (1 - b1) g_t,   v_t = b2 v_{t-1} + (1 - b2) g_t^2,
    theta_t = theta_{t-1} - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

PyTorch's ``Adam(fused=True).step`` spends most of a small model's step in Python (grouping
tensors by device and dtype, checking flags): about 0.4 ms per step for the 2-D EIMs' six
parameter tensors on a 2-core CPU, against 0.03 ms for the fused kernel itself
(``bench/toy2d_steps.py`` profile). :class:`Adam` keeps the lists of parameters and state
tensors and calls the same kernel (``torch._fused_adam_``) directly, so its parameters and
state are bit-identical to ``torch.optim.Adam(fused=True)`` (tested). Anything the lean path
does not cover (AMSGrad, maximize, a differentiable or capturable optimiser, parameters on
several devices or of several dtypes, sparse gradients, a device without the fused kernel) falls
back to ``torch.optim.Adam.step``.

Under mixed precision it is an ordinary optimiser to the gradient scaler: unlike
``torch.optim.Adam(fused=True)`` it does not declare that it unscales gradients inside its step
(``_step_supports_amp_scaling``), so a ``GradScaler`` (``precision="16-mixed"``) unscales them
before the step, and Lightning's gradient clipping (``gradient_clip_val``), which refuses an
optimiser that unscales internally, works in ``"16-mixed"`` and ``"bf16-mixed"`` as in float32.

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
        self._step_supports_amp_scaling = False  # the scaler unscales the gradients itself (module doc)

    @staticmethod
    def _lean(group: dict) -> bool:
        return bool(group["fused"]) and not (
            group["amsgrad"]
            or group["maximize"]
            or group["capturable"]
            or group["differentiable"]
            or group.get("decoupled_weight_decay", False)
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Adam.zero_grad``; ``set_to_none=True`` (the default) without its
        per-call bookkeeping (a plain loop: tens of microseconds less per step)."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._plan = None  # the state tensors were replaced

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._plan = None

    def _lean_plan(self):
        """Per group: (group, params, exp_avgs, exp_avg_sqs, steps) of every parameter, state
        initialised exactly as ``torch.optim.Adam`` does for a fused step; None where the lean
        path does not apply (a flag it does not cover, several devices or dtypes, sparse
        gradients). Kept until the groups or the state are replaced."""
        plan = getattr(self, "_plan", None)
        if plan is not None:
            return plan
        plan = []
        for group in self.param_groups:
            params = list(group["params"])
            if not self._lean(group):
                return None
            if any(p.device != params[0].device or p.dtype != params[0].dtype for p in params):
                return None
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            plan.append(
                (
                    group,
                    params,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                )
            )
        self._plan = plan
        return plan

    def _lean_lists(self):
        """The plan narrowed to this step's parameters with gradients, or None (not lean)."""
        plan = self._lean_plan()
        if plan is None:
            return None
        lists = []
        for group, params, exp_avgs, exp_avg_sqs, steps in plan:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # some parameters without a gradient this step
                keep = [i for i, g in enumerate(grads) if g is not None]
                params, exp_avgs, exp_avg_sqs, steps = (
                    [seq[i] for i in keep] for seq in (params, exp_avgs, exp_avg_sqs, steps)
                )
                grads = [grads[i] for i in keep]
            if any(g.is_sparse for g in grads):
                return None
            lists.append((group, params, grads, exp_avgs, exp_avg_sqs, steps))
        return lists

    @torch.no_grad()
    def step(self, closure=None, **kwargs):
        loss = None
        lists = None if kwargs else self._lean_lists()
        if lists is None:
            return super().step(closure, **kwargs)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            lists = self._lean_lists()  # the closure set this step's gradients
        self._lean_step(lists, None)
        return loss

    @torch.no_grad()
    def step_unless(self, found_inf: Tensor) -> None:
        """One step, skipped where ``found_inf`` (a 0-d float tensor on the parameters' device) is
        nonzero: parameters, moments and step counts stay as they were, without a host sync
        (the fused kernel's own skip, as a ``GradScaler`` uses it)."""
        lists = self._lean_lists()
        if lists is not None:
            self._lean_step(lists, found_inf)
        elif not bool(found_inf):
            self.step()

    def _lean_step(self, lists, found_inf: Tensor | None) -> None:
        self._opt_called = True  # what a learning-rate scheduler checks (its warning otherwise)
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in lists:
            if not params:
                continue
            lr = group["lr"]
            if isinstance(lr, torch.Tensor) and lr.device.type == "cpu" and params[0].device.type != "cpu":
                lr = lr.item()
            beta1, beta2 = group["betas"]
            # a skipped step does not count (as torch's GradScaler path leaves it); a list of the one
            # 0-d increment, not the tensor itself: torch's tensor-scalar overload copies it once per
            # parameter on the CPU (9.9 us against 5.0 for six parameters)
            if found_inf is None:
                torch._foreach_add_(steps, 1)
            else:
                torch._foreach_add_(steps, [1 - found_inf] * len(steps))
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
