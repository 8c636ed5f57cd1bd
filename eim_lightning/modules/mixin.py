"""Layer 3: the bound-estimator mixin every LightningModule of eim-lightning shares.

A module mixes :class:`BoundEstimatorMixin` into ``lightning.LightningModule`` and only says
what its density is (``self.density``, a layer-2 :class:`~eim_lightning.densities.Density`).
The mixin owns everything else:

* ``training_step``: ``bound, diagnostics = density.bound_and_diagnostics(x)``,
  ``loss = -bound.mean()``, run by the step engine (:mod:`.engine`: manual optimisation,
  several optimiser steps per Lightning batch for generated data, the lean fused
  :class:`eim_lightning.optim.Adam`); logs ``train/<bound_name>`` (the last step's batch mean;
  the epoch value averages every example of every step) and, on the steps whose logs are
  written, ``train/<diagnostic>`` of that very step;
* ``validation_step`` / ``test_step``: ``density.log_prob_lower_bound(x, num_samples)``
  with ``num_val_samples`` / ``num_test_samples`` replicas (the paper: 1000 at test), logged as
  ``val/<bound_name>`` / ``test/<bound_name>`` through torchmetrics ``MeanMetric`` so the value
  is the mean over every example of every batch and every process;
* ``configure_optimizers``: Adam (lr 3e-4, the paper's; PyTorch's fused implementation where the
  device supports it) with optional step milestones at
  which the learning rate is multiplied by ``lr_gamma`` (the paper: ÷3 after 1e6 steps);
* input checks (:mod:`.checks`): a batch is a tensor ``[B, *event]`` or a tuple/list whose first
  element is; wrong shapes, dtypes and values (NaN/Inf; non-binary pixels for a Bernoulli
  likelihood) raise a clear error (``validate_inputs``; the values of a data set that lists them
  checked once when training starts, else one host sync per block of steps), a non-finite loss
  stops training with the first bad step named (``check_finite_every_n_steps``; one host sync per
  Lightning batch, 0 disables), before any later checkpoint, validation or image;
* ``setup``: checks that a datamodule's ``event_shape`` matches the model's and copies its
  ``data_mean`` into the density's ``data_mean`` buffer (energies see centred input), and
  passes it to every submodule with an ``initialize_from_data(mean)`` method (a VAE, also as
  an EIM's proposal: encoder centring and, once, the decoder's output bias).

* precision (:mod:`.precision`): fit warns where a bfloat16 precision runs on a CPU without
  bfloat16 instructions (emulated, several times slower than float32);
* randomness (:mod:`.randomness`): exact resume, evaluation isolated from the training
  stream, one stream per process;
* density hooks: every :class:`~eim_lightning.densities.Density` inside the module (the model
  itself, a VAE's prior, an EIM's proposal, ...) gets ``after_optimizer_step(reduce)`` after
  each optimiser step and ``before_evaluation(stage, reduce)`` at the start of validation and
  test, ``reduce`` averaging over processes (LARS keeps its moving-average Z and re-estimates
  its evaluation Z there, identical on every worker); the module knows no density type.

``bound_name`` is ``"bound"``; LARS overrides it with ``"log_prob_estimate"`` (its Z is
estimated, so its value is not a bound).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ..densities import Density, Normal
from ..densities.base import check_positive_int
from ..nn import MLP
from ..optim import Adam
from .checks import InputChecksMixin
from .engine import StepEngineMixin, overrides
from .precision import warn_if_bf16_is_emulated
from .randomness import RandomStateMixin

__all__ = ["BoundEstimatorMixin", "default_proposal", "default_mlp", "resolve_density"]


def default_proposal(data_dim: int, proposal: Density | None, dim_name: str = "data_dim") -> Density:
    """``proposal`` (which must be a density over ``[data_dim]``), or the paper's default N(0, I)."""
    if proposal is not None and tuple(proposal.event_shape) != (data_dim,):
        raise ValueError(
            f"{dim_name} is {data_dim} but the proposal ({type(proposal).__name__}) is a density over "
            f"{list(proposal.event_shape)}: set {dim_name} to the proposal's dimension, "
            f"or pass a proposal over [{data_dim}]"
        )
    return proposal if proposal is not None else Normal(data_dim)


def default_mlp(
    data_dim: int, hidden_sizes: Sequence[int], net: nn.Module | None, out_dim: int = 1, output_bias: bool = True
) -> nn.Module:
    """``net``, or the paper's default tanh MLP ``data_dim -> hidden_sizes -> out_dim``."""
    return net if net is not None else MLP(data_dim, list(hidden_sizes), out_dim, output_bias=output_bias)


def resolve_density(density: Density | None, parts: dict[str, object], build) -> Density:
    """``density`` if given (then no parts may be given), else ``build()``."""
    if density is None:
        return build()
    given = [k for k, v in parts.items() if v is not None]
    if given:
        raise ValueError(f"pass either a ready density or its parts, not both (got density and {given})")
    return density


class BoundEstimatorMixin(StepEngineMixin, InputChecksMixin, RandomStateMixin):
    """Training/validation/test logic for any module whose ``self.density`` has a bound.

    Mix in *before* ``LightningModule``: ``class MyEIM(BoundEstimatorMixin, L.LightningModule)``;
    the concrete ``__init__`` calls ``super().__init__(**estimator_kwargs)`` and then sets
    ``self.density``.

    Args:
        lr: Adam learning rate.
        lr_milestones: global steps at which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the factor.
        num_val_samples: replicas per example in validation.
        num_test_samples: replicas per example at test (1000, as in the paper).
        validate_inputs: check batch shapes, dtypes and finiteness (one host sync a step).
        check_finite_every_n_steps: raise if the loss is not finite, every n steps (0: never).
        steps_per_block: optimiser steps per Lightning batch for generated data (None: automatic;
            see :mod:`eim_lightning.modules.engine`).
    """

    bound_name: str = "bound"
    density: Density

    def __init__(
        self,
        lr: float = 3e-4,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 1.0 / 3.0,
        num_val_samples: int = 100,
        num_test_samples: int = 1000,
        validate_inputs: bool = True,
        check_finite_every_n_steps: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 < lr_gamma:
            raise ValueError(f"lr_gamma must be > 0, got {lr_gamma}")
        self.lr = lr
        self.lr_milestones = sorted(int(m) for m in lr_milestones)
        self.lr_gamma = lr_gamma
        self.num_val_samples = check_positive_int("num_val_samples", num_val_samples)
        self.num_test_samples = check_positive_int("num_test_samples", num_test_samples)
        self.validate_inputs = validate_inputs
        self.check_finite_every_n_steps = check_positive_int(
            "check_finite_every_n_steps", check_finite_every_n_steps, 0
        )
        self._diagnostics_wanted = True
        self.train_metric = MeanMetric(nan_strategy="disable")
        self.val_metric = MeanMetric(nan_strategy="disable")
        self.test_metric = MeanMetric(nan_strategy="disable")

    # -- data ---------------------------------------------------------------------------------

    def unpack_batch(self, batch) -> Tensor:
        """The data tensor of a batch: the batch itself or the first element of a tuple/list."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__} expected a batch that is a Tensor [B, ...] or a tuple/list whose "
                f"first element is one, got {type(batch).__name__}"
            )
        return x

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        for module in self.modules():  # nested densities too (a VAE as an EIM's proposal, a prior)
            if isinstance(module, Density):
                module.validate_args = self.validate_inputs
        self.separate_rank_streams()
        self.configure_step_engine(stage)
        if dm is None:
            return
        shape = getattr(dm, "event_shape", None)
        if shape is not None and torch.Size(shape) != self.density.event_shape:
            raise ValueError(
                f"{type(dm).__name__} yields data of shape [B, {', '.join(map(str, shape))}] but "
                f"{type(self).__name__} models [B, {', '.join(map(str, self.density.event_shape))}]; "
                f"set the model's data_dim (or its density) to match the data"
            )
        mean = getattr(dm, "data_mean", None)
        buffer = getattr(self.density, "data_mean", None)
        if stage == "fit" and mean is not None and isinstance(buffer, Tensor):
            buffer.copy_(torch.as_tensor(mean, dtype=buffer.dtype).expand_as(buffer))
            rank_zero_info(f"{type(self).__name__}: energy inputs centred on the datamodule's data_mean")
        if stage == "fit" and mean is not None:
            # hook: any part that learns from the data mean (a VAE's encoder centring and decoder
            # bias, also when the VAE is an EIM's proposal) defines initialize_from_data(mean)
            for module in self.modules():
                hook = getattr(module, "initialize_from_data", None)
                if callable(hook):
                    hook(mean)

    # -- steps --------------------------------------------------------------------------------

    def training_bound(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-example training bound ``[B]`` and diagnostics of a batch.

        Override to train on something other than ``density.bound_and_diagnostics`` of the
        batch's first tensor (e.g. pairs ``(x, c)``). ``self._diagnostics_wanted`` says whether
        this step's diagnostics will be logged (the density may then skip computing them)."""
        return self.density.bound_and_diagnostics(self.unpack_batch(batch), diagnostics=self._diagnostics_wanted)

    def evaluation_bound(self, batch, num_samples: int) -> Tensor:
        """The per-example evaluation bound ``[B]`` of a batch with ``num_samples`` replicas."""
        return self.density.log_prob_lower_bound(self.unpack_batch(batch), num_samples=num_samples)

    def training_bound_only(self, batch) -> Tensor:
        """The training bound of a step whose diagnostics are not wanted (what
        :meth:`compiled_bound` compiles)."""
        return self.training_bound(batch)[0]

    def _logs_after_this_step(self) -> bool:
        """Whether Lightning writes the training logs after the optimiser step about to run."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if not every:
            return False
        if self.automatic_optimization:
            done = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
        else:
            done = trainer.global_step + 1
        return done % every == 0

    def step_loss(self, batch, last: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor] | None]:
        """One optimiser step's ``(loss, bound, diagnostics)``; diagnostics only when they will be
        logged (the last step of a Lightning batch whose logs are written), else None."""
        self._diagnostics_wanted = last and self._logs_after_this_step()
        closed = None
        if self._closed_form_on:  # gradients computed along with the bound (see .engine)
            x, traced = self.unpack_batch(batch), self._traced_closed_form
            if traced is not None and not self._diagnostics_wanted:
                bound = traced(x)
                closed = None if bound is None else (bound, None)
            if closed is None:
                closed = self.density.closed_form_training_bound(x, self._diagnostics_wanted)
        if closed is not None:
            bound, diagnostics = closed
        else:
            bound, diagnostics = None if self._diagnostics_wanted else self.compiled_bound(batch), None
            if bound is None:
                bound, diagnostics = self.training_bound(batch)
        return -bound.mean(), bound, diagnostics if self._diagnostics_wanted else None

    def offers_closed_form(self) -> bool:
        """Whether the density has closed-form training gradients that mean this module's loss:
        it implements ``closed_form_training_bound`` and the module trains on its
        ``bound_and_diagnostics`` (``training_bound`` not overridden)."""
        return self.density.offers_closed_form_training() and not overrides(self, "training_bound", BoundEstimatorMixin)

    def training_step(self, batch, batch_idx: int) -> dict | None:
        """The optimiser steps of one Lightning batch (a block of N under the step engine, one under
        Lightning's automatic optimisation). Returns ``{"step_losses": [...]}``, each step's loss
        in order (detached; also the steps a CUDA graph served), which callbacks receive as
        ``outputs`` in ``on_train_batch_end``: a way to read every step's loss without a per-step
        hook, which would rule the graph out (automatic optimisation adds Lightning's ``"loss"``);
        None where no step was left before ``max_steps``."""
        if self.automatic_optimization:
            loss, bound, diagnostics = self.step_loss(batch)
            results = [(loss, bound, diagnostics)]
        else:
            results = self.run_block(batch)
            if not results:
                return None
        self._check_finite(results)
        bounds = [bound for _, bound, _ in results]
        if len(bounds) > 1:
            self.train_metric.update(torch.cat(bounds[:-1]))
        self.train_metric(bounds[-1])
        self.log(f"train/{self.bound_name}", self.train_metric, on_step=True, on_epoch=True, prog_bar=True)
        diagnostics = results[-1][2]
        for name, value in (diagnostics or {}).items():
            self.log(f"train/{name}", value.detach().float().mean(), on_step=True, on_epoch=False)
        out = {"step_losses": [loss.detach() for loss, _, _ in results]}
        return {"loss": results[-1][0], **out} if self.automatic_optimization else out

    def _eval_step(self, batch, metric: MeanMetric, stage: str, num_samples: int) -> None:
        metric.update(self.evaluation_bound(batch, num_samples))
        self.log(f"{stage}/{self.bound_name}", metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, "val", self.num_val_samples)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric, "test", self.num_test_samples)

    # -- density hooks -------------------------------------------------------------------------

    def _densities_with(self, hook: str) -> list[Density]:
        """The densities inside the module that override ``hook`` of :class:`Density`."""
        return [m for m in self.modules() if isinstance(m, Density) and overrides(m, hook, Density)]

    def _mean_over_processes(self, value: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(value, reduce_op="mean")

    def after_optimizer_step(self) -> None:
        """After every optimiser step: each density's ``after_optimizer_step`` (LARS's Z)."""
        stateful = getattr(self, "_stateful_densities", None)
        for density in self._densities_with("after_optimizer_step") if stateful is None else stateful:
            density.after_optimizer_step(self._mean_over_processes)

    def optimizer_step(self, *args, **kwargs) -> None:
        # Lightning's automatic optimisation (see .engine): the engine calls after_optimizer_step itself
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def _before_evaluation(self, stage: str) -> None:
        for density in self._densities_with("before_evaluation"):
            density.before_evaluation(stage, self._mean_over_processes)

    # -- hooks ----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        warn_if_bf16_is_emulated(str(self.trainer.precision), self.device, type(self).__name__)
        self.collect_step_hooks()
        self._stateful_densities = self._densities_with("after_optimizer_step")

    def on_train_start(self) -> None:
        self.restore_rng_on_train_start()
        self.check_training_data()
        self.align_validation_to_blocks()
        self.prepare_closed_form()
        self.prepare_compiled_bound()
        self.prepare_graphed_step()

    def on_validation_epoch_start(self) -> None:
        # re-create the metric state in this loop's grad mode: a previous trainer.validate() ran
        # under inference mode and left inference tensors, which fit's validation cannot update
        self.val_metric.reset()
        self._before_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self.test_metric.reset()
        self._before_evaluation("test")

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self):
        # one fused kernel for all parameters, called without torch.optim's per-step Python
        # (eim_lightning.optim.Adam); plain Adam where the device has no fused kernel
        params = [p for p in self.parameters() if p.requires_grad]
        try:
            optimizer = Adam(params, lr=self.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            optimizer = Adam(params, lr=self.lr, fused=False)
        if not self.lr_milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, self.lr_milestones, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
