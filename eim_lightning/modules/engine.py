r"""Layer 3: the training-step engine every eim-lightning module shares.

A 2-D EIM's optimiser step is a few hundred microseconds of arithmetic; Lightning's automatic
optimisation (closure, hooks, progress tracking, logging) costs several times that per batch.
The engine therefore runs **several optimiser steps per Lightning batch** where the data allow
it, under manual optimisation, and pays Lightning's per-batch cost once per *block*:

* a datamodule that generates its data (``datamodules.SyntheticDataModule``: the 2-D targets,
  the synthetic sets) has a ``steps_per_block`` attribute; at ``setup("fit")`` the engine sets
  it to N and the datamodule yields ``{"steps": [batch_0, ..., batch_{N-1}]}`` blocks, each
  step's batch keyed by its own global step exactly as with N = 1;
* N (``steps_per_block``; default ``None`` = automatic) divides every interval Lightning counts
  in batches: ``log_every_n_steps``, an integer ``val_check_interval``, the datamodule's
  ``steps_per_epoch`` and the callbacks' ``every_n_train_steps`` / ``every_n_steps``. The
  automatic choice is the largest divisor of their greatest common divisor up to
  :data:`MAX_STEPS_PER_BLOCK`; an explicit N that does not divide one of them raises at setup,
  naming it;
* every step inside a block is a full optimiser step: ``global_step`` counts optimiser steps at
  every hook, the block is cut short at ``max_steps``, logs are written at the same steps and
  under the same step numbers as with N = 1, validation runs after the same steps, and the
  ``on_before_backward`` / ``on_after_backward`` / ``on_before_optimizer_step`` hooks of the
  module and of every callback run at every step; ``on_train_batch_start/end`` run once a block;
* a bad input stops training before the block's first step and a non-finite loss at the end
  of the block, before any checkpoint, validation or image, naming the first bad step (one host
  sync per block for each check);
* on the CPU, N = 1 and N = 8 give bit-identical parameters (tested).

**Compilation** (``compile``; default ``None`` = automatic): the one-step training bound can run
through ``torch.compile`` (forward and backward; the optimiser is one fused kernel anyway). It
costs seconds to minutes of compilation at the first step, so the automatic choice compiles only
where it was measured to pay, in runs at least as long as the density's
``compile_min_steps`` (None: never; HIS, whose leapfrog is hundreds of small operations, ran
2.6x faster per step compiled on the CPU than through autograd; the MLP VAE's measured gain and
break-even are at ``densities.vae.COMPILE_MIN_STEPS``, from ``bench/vae_compile.py``); where the step has
closed-form gradients (below), never when they are replayed from their trace (HIS's 2-D step
traced was faster than compiled: 1.60 against 3.53 ms in docs/BENCHMARKS_BREAKDOWN.md) and
from :data:`CLOSED_FORM_COMPILE_MIN_STEPS` on when they run eagerly (``trace=False``); on the
CPU with inductor's C++ wrapper and torch's own random number generators (:func:`compiled_for`). A compiled
step does not use the closed form. Steps whose
diagnostics are logged run eagerly, and so does a batch of another shape than the first compiled
one (an epoch's last, partial batch: recompiling for it took another 30 s on 2 CPU cores, inside
the run). If compilation fails, training warns once and continues eagerly.

**Closed-form gradients** (``closed_form``; default ``None`` = automatic): where the density
has a closed form for its training gradient (``Density.closed_form_training_bound``: SNIS,
LARS and HIS with MLP networks and a proposal without parameters), a step computes the bound and the
parameters' gradients in plain tensor operations, without building an autograd graph: a 2-D
SNIS step is some seventy small operations (HIS's about 380, the potential's
Hessian-vector products included), and the autograd engine's cost per operation would be
most of its time. The automatic choice uses it on the CPU (``True``: on any device; ``False``:
never), not under mixed precision (autocast); the result equals autograd's to rounding (tested
in float64). Per-step hooks still run; ``on_before_backward`` receives the (graph-less) loss,
and ``on_after_backward`` sees the gradients in ``.grad`` as usual. Where the closed form is
pure tensor operations (``Density.closed_form_gradients``: SNIS, LARS and HIS), steps replay it from a
TorchScript trace (``trace``; default True; :mod:`.traced`): bitwise the same results, without
Python's cost per operation; steps whose diagnostics are logged run it eagerly.

**Threads** (``step_threads``; default ``None`` = automatic): a closed-form step on the CPU is a
chain of operations on tensors of a few thousand numbers, too small to gain from a second thread;
handing each to torch's pool of intra-op threads costs more than it saves. The automatic choice
runs blocks of closed-form steps on one thread and restores torch's setting after each block, so
validation, sampling and images keep every thread (measured on 2 cores, steps of SNIS, LARS and HIS
on one thread against two: ``bench/toy2d_steps.py``, docs/BENCHMARKS_BREAKDOWN.md). Autograd steps keep torch's
setting (TRS, whose T = 1024 proposals fill bigger tensors, was faster on two); an integer sets
the count for every block.

**CUDA graphs** (``cuda_graphs``; default ``None`` = automatic): on a GPU a small model's step is
hundreds of kernel launches, each a Python call, and the host that makes them is the limit.
Where it applies the engine captures the whole optimiser step (the bound, the backward pass or
closed form, the non-finite flag, the fused Adam step and the densities' state after it, such as
LARS's Z) into a CUDA graph at the first step and replays it at the others (:mod:`.graphed`: the
first replay is checked against an eager step from the same state, the random draws included).
It applies on a CUDA device under the engine's loop, with this package's fused Adam
(:class:`eim_lightning.optim.Adam`, what ``configure_optimizers`` returns), no per-step hooks
(``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step`` of the module or a
callback: Python that would run between the backward pass and the optimiser step) and
``check_finite_every_n_steps`` 0 or 1, for blocks whose batch values were checked before the block
(or ``validate_inputs=False``). Steps whose diagnostics are logged, and batches of another shape
than the captured one, run eagerly; a learning-rate change (``lr_milestones``) captures again.
A module whose step bakes in a number that changes from step to step says so in
``step_is_stationary()`` (the VAE's KL warm-up weight): those steps run eagerly, and the graph is
captured at the first step after. ``cuda_graphs=True`` warns where a setting rules it out and
raises off a GPU.

A user's own DataLoader takes the same manual path with N = 1. Lightning's automatic
optimisation (the closure path, N = 1) is used instead where manual optimisation cannot honour a
setting: gradient clipping (``gradient_clip_val``), gradient accumulation
(``accumulate_grad_batches``), several processes (DDP: every step's gradients averaged by
Lightning), and mixed precision with a gradient scaler (``16-mixed``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..densities import Density
from ..densities.base import values_are_prechecked
from ..optim import Adam
from .graphed import GraphedStep
from .traced import TracedClosedForm

__all__ = [
    "StepEngineMixin",
    "MAX_STEPS_PER_BLOCK",
    "CLOSED_FORM_COMPILE_MIN_STEPS",
    "block_steps",
    "choose_steps_per_block",
    "compiled_for",
]

#: the largest block the automatic choice takes (Lightning's per-batch cost is then < 1/50 a step)
MAX_STEPS_PER_BLOCK = 50

#: the shortest run compiled automatically where the step has closed-form gradients run eagerly
#: (``trace=False``), whatever the density's ``compile_min_steps`` (HIS's 2-D step
#: in two runs of ``bench/toy2d_steps.py``: 3.39 ms eager closed form against 2.33 ms compiled, a
#: break-even near 26,000 steps after 27 s of compilation with an empty on-disk cache; 2.87 against
#: 3.07, no break-even; 3.12 against 1.99 after 29.8 s, again near 26,000; 2.89 against 3.53, none
#: (the last is docs/BENCHMARKS_BREAKDOWN.md); a fresh process compiles for longer)
CLOSED_FORM_COMPILE_MIN_STEPS = 50_000

_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def block_steps(batch) -> list:
    """The per-step batches of a Lightning batch: a ``{"steps": [...]}`` block, else ``[batch]``."""
    if isinstance(batch, dict) and "steps" in batch:
        return list(batch["steps"])
    return [batch]


def _step_intervals(trainer: L.Trainer, datamodule) -> dict[str, int]:
    """Every setting Lightning counts in batches that is given in optimiser steps."""
    intervals = {"log_every_n_steps": trainer.log_every_n_steps}
    if isinstance(trainer.val_check_interval, int):
        intervals["val_check_interval"] = trainer.val_check_interval
    intervals[f"{type(datamodule).__name__}.steps_per_epoch"] = getattr(datamodule, "steps_per_epoch", 0)
    for callback in trainer.callbacks:
        for attr in ("_every_n_train_steps", "every_n_steps"):
            value = getattr(callback, attr, None)
            if isinstance(value, int) and value > 0:
                intervals[f"{type(callback).__name__}.{attr.lstrip('_')}"] = value
    return {k: int(v) for k, v in intervals.items() if v}


def choose_steps_per_block(requested: int | None, trainer: L.Trainer, datamodule) -> int:
    """N for this fit: ``requested`` checked against the step intervals, or the automatic choice."""
    fractional = not isinstance(trainer.val_check_interval, int) and trainer.val_check_interval != 1.0
    limited = isinstance(trainer.limit_train_batches, int)
    intervals = _step_intervals(trainer, datamodule)
    if requested is None:
        if fractional or limited:
            return 1
        g = 0
        for value in intervals.values():
            g = math.gcd(g, value)
        g = g or MAX_STEPS_PER_BLOCK
        return max(d for d in range(1, MAX_STEPS_PER_BLOCK + 1) if g % d == 0)
    if requested == 1:
        return 1
    if fractional:
        raise ValueError(
            f"steps_per_block={requested} needs an integer val_check_interval (in steps), "
            f"got {trainer.val_check_interval}"
        )
    if limited:
        raise ValueError(
            f"steps_per_block={requested}: Trainer(limit_train_batches={trainer.limit_train_batches}) "
            f"counts batches, not steps; use max_steps (or steps_per_block=1)"
        )
    for name, value in intervals.items():
        if value % requested:
            raise ValueError(
                f"steps_per_block={requested} must divide {name}={value} (Lightning counts it in "
                f"batches of {requested} optimiser steps); change one of them or leave "
                f"steps_per_block=None to choose automatically"
            )
    return requested


def overrides(obj, hook: str, base) -> bool:
    """Whether ``obj``'s class overrides ``base``'s ``hook``."""
    return getattr(type(obj), hook, None) is not getattr(base, hook, None)


def _optional_count(name: str, value: int | None) -> int | None:
    """``value`` if it is None (automatic) or an integer >= 1; else a clear ``ValueError``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None (automatic) or an integer >= 1, got {value!r}")
    return value


def compiled_for(fn, device: torch.device):
    """``torch.compile(fn)`` as the engine compiles a training bound for ``device``. On the CPU:

    * with inductor's C++ wrapper, one compiled module instead of a Python wrapper around dozens
      of separately built kernels (measured: the MNIST VAE's HIS-prior step compiled in 23 s
      instead of 34 s and ran 7% faster);
    * with torch's own random number generators (``fallback_random``), not inductor's: compiled,
      the 1023 x 50 proposal draws of an MNIST VAE prior took 1.12 ms with inductor's CPU ``randn``
      against 0.20 ms with torch's (``bench/compiled_random.py``, 2 cores), a cost every EIM prior
      paid each step. The compiled bound then draws the same numbers, from the same generator, as
      the eager one.
    """
    return torch.compile(fn, options={"cpp_wrapper": True, "fallback_random": True} if device.type == "cpu" else None)


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` (None: unchanged), then restore the count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StepEngineMixin:
    """Manual-optimisation training loop with several optimiser steps per Lightning batch.

    The module provides ``step_loss(batch, last) -> (loss, bound, diagnostics_or_None)`` for one
    optimiser step, ``training_bound_only(batch)`` (what is compiled), ``check_batch(batch)``,
    ``checked_block(steps)`` (checks a block's batches at once; the context the block runs in),
    ``validate_inputs``, ``_logs_after_this_step()`` (whether the coming step's diagnostics are
    logged), ``nonfinite_guard(loss)`` (a 0-d flag tensor, nonzero to skip the step, or None) and
    ``after_optimizer_step()``; it may override :meth:`step_is_stationary`; the engine does the rest.

    Args:
        steps_per_block: optimiser steps per Lightning batch for generated data (None: automatic).
        compile: run the training bound through ``torch.compile`` (None: automatic, see the module doc).
        closed_form: use the density's closed-form training gradients (None: on the CPU where the
            density has them; see the module doc).
        trace: replay pure closed-form steps from a TorchScript trace (False: run them eagerly).
        step_threads: torch's intra-op threads while a block of training steps runs, restored
            after it (None: automatic, one thread for closed-form steps on the CPU, else torch's
            setting; see the module doc).
        cuda_graphs: capture the whole optimiser step into a CUDA graph and replay it (None:
            automatic, wherever it applies on a GPU; True: the same, warning where a setting rules
            it out, an error off a GPU; False: never; see the module doc).
    """

    def __init__(
        self,
        steps_per_block: int | None = None,
        compile: bool | None = None,
        closed_form: bool | None = None,
        trace: bool = True,
        step_threads: int | None = None,
        cuda_graphs: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("compile", compile), ("closed_form", closed_form), ("cuda_graphs", cuda_graphs)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be None (automatic), True or False, got {value!r}")
        if not isinstance(trace, bool):
            raise ValueError(f"trace must be True or False, got {trace!r}")
        self.compile = compile
        self.closed_form = closed_form
        self.trace = trace
        self.step_threads = _optional_count("step_threads", step_threads)
        self.cuda_graphs = cuda_graphs
        self._graphed_step: GraphedStep | None = None
        self._closed_form_on = False
        self._traced_closed_form: TracedClosedForm | None = None
        self._compiled_bound, self._compiled_shape, self._compiled_step = None, None, False
        self.steps_per_block = _optional_count("steps_per_block", steps_per_block)
        self._block_size = 1
        self._step_hooks: list = []
        self._user_automatic_optimization: bool | None = None

    # -- which loop -----------------------------------------------------------------------------

    @property
    def automatic_optimization(self) -> bool:
        """False (the engine) unless a trainer setting needs Lightning's closure loop (see the module doc)."""
        if self._user_automatic_optimization is not None:
            return self._user_automatic_optimization
        trainer = self._trainer
        if trainer is None:
            return False
        clip = trainer.gradient_clip_val
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return bool(
            (clip is not None and clip > 0)
            or trainer.accumulate_grad_batches != 1
            or trainer.world_size > 1
            or scaler is not None
        )

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._user_automatic_optimization = value

    def configure_step_engine(self, stage: str) -> None:
        """At ``setup``: choose N and hand it to a datamodule that generates blocks (and quiet
        Lightning's warnings that do not apply to the engine's loop)."""
        if stage != "fit":
            return
        if not self.automatic_optimization:
            # Lightning >= 2.6 warns at every step-interval checkpoint of a manually optimised module
            # that it holds the state after the optimiser step: here it is meant to (the state at
            # global_step, which exact resume continues from)
            warnings.filterwarnings(
                "ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps"
            )
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "steps_per_block"):
            self._block_size = 1
            return
        if self.automatic_optimization:
            if self.steps_per_block not in (None, 1):
                raise ValueError(
                    f"steps_per_block={self.steps_per_block} needs manual optimisation, which this "
                    f"trainer's settings rule out (gradient clipping, accumulation, several "
                    f"processes or a gradient scaler); use steps_per_block=1"
                )
            self._block_size = 1
        else:
            self._block_size = choose_steps_per_block(self.steps_per_block, trainer, dm)
        dm.steps_per_block = self._block_size
        if self._block_size > 1:  # Lightning compares batches (blocks) with a logging interval in steps
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
            )

    def collect_step_hooks(self) -> None:
        """At ``on_fit_start``: the per-step hooks to run."""
        # the hooks Lightning's manual_backward / LightningOptimizer.step would run, found once
        trainer = self.trainer
        self._step_hooks = []
        for hook in _STEP_HOOKS:
            owners = [cb for cb in trainer.callbacks if overrides(cb, hook, L.Callback)]
            if overrides(self, hook, L.LightningModule):
                owners.append(self)
            self._step_hooks.extend((hook, owner) for owner in owners)

    def align_validation_to_blocks(self) -> None:
        """At ``on_train_start``: ``val_check_interval`` steps are ``val_check_interval / N`` batches."""
        # Lightning counts val_check_interval in batches: one batch is a block of N steps
        trainer = self.trainer
        if self._block_size > 1 and isinstance(trainer.val_check_interval, int):
            trainer.val_check_batch = trainer.val_check_interval // self._block_size

    def _run_length(self) -> int:
        trainer = self.trainer
        if trainer.max_steps >= 0:
            return trainer.max_steps
        estimate = trainer.estimated_stepping_batches
        return int(estimate * self._block_size) if math.isfinite(estimate) else sys.maxsize

    def prepare_compiled_bound(self) -> None:
        """At ``on_train_start``: compile the one-step training bound where it pays (module doc)."""
        self._compiled_bound, self._compiled_shape, self._compiled_step = None, None, False
        if self.compile is False or self.automatic_optimization:
            return
        density = getattr(self, "density", None)
        shortest = getattr(density, "compile_min_steps", None)
        if self._closed_form_on and shortest is not None:
            shortest = max(shortest, CLOSED_FORM_COMPILE_MIN_STEPS)
        pays = shortest is not None and self._traced_closed_form is None
        if self.compile or (pays and self._run_length() >= shortest):
            self._closed_form_on, self._traced_closed_form = False, None
            self._compiled_bound = compiled_for(self.training_bound_only, self.device)

    def prepare_closed_form(self) -> None:
        """At ``on_train_start``, before :meth:`prepare_compiled_bound`: whether steps try the
        density's closed-form gradients (module doc)."""
        density = getattr(self, "density", None)
        self._closed_form_on = bool(
            self.closed_form is not False
            and not self.automatic_optimization
            and not self.compile
            and density is not None
            and self.offers_closed_form()
            and "mixed" not in str(self.trainer.precision)  # autocast: autograd handles the casts
            and (self.closed_form or self.device.type == "cpu")
        )
        traced = self._closed_form_on and self.trace and overrides(density, "closed_form_gradients", Density)
        self._traced_closed_form = TracedClosedForm(density, type(self).__name__) if traced else None

    def step_is_stationary(self) -> bool:
        """Whether the coming optimiser step is the same computation as every later one, so that a
        CUDA graph may capture or replay it: False while a number the step uses as a constant still
        changes with ``global_step`` (those steps run eagerly). True unless a module says otherwise."""
        return True

    def prepare_graphed_step(self) -> None:
        """At ``on_train_start``, after :meth:`collect_step_hooks`: whether steps are captured into
        a CUDA graph (module doc)."""
        self._graphed_step = None
        if self.cuda_graphs is False or self.automatic_optimization:
            return
        if self.device.type != "cuda":
            if self.cuda_graphs:
                raise ValueError(
                    f"{type(self).__name__}(cuda_graphs=True) needs a CUDA device, but it trains on "
                    f"{self.device}; use cuda_graphs=None (automatic) or False"
                )
            return
        optimizer = self.optimizers().optimizer
        reasons = []
        if self._step_hooks:
            names = sorted({f"{type(owner).__name__}.{hook}" for hook, owner in self._step_hooks})
            reasons.append(f"per-step hooks run Python inside the step ({', '.join(names)})")
        if getattr(self, "check_finite_every_n_steps", 0) not in (0, 1):
            reasons.append("check_finite_every_n_steps is neither 0 nor 1 (the step differs between steps)")
        if not isinstance(optimizer, Adam) or optimizer._lean_plan() is None:
            reasons.append(f"the optimiser ({type(optimizer).__name__}) is not eim_lightning.optim.Adam's fused step")
        if reasons:
            if self.cuda_graphs:
                rank_zero_warn(f"{type(self).__name__}: no CUDA graph for the training step: {'; '.join(reasons)}")
            return
        self._graphed_step = GraphedStep(self._plain_step, self, type(self).__name__)

    def compiled_bound(self, batch) -> Tensor | None:
        """The compiled one-step bound of ``batch``, or None (not compiled, compilation failed, or
        a batch of another shape than the first compiled one: module doc)."""
        if self._compiled_bound is None:
            return None
        shape = self.unpack_batch(batch).shape
        if self._compiled_shape is None:
            self._compiled_shape = shape
        elif shape != self._compiled_shape:
            return None
        self.check_batch(batch)  # the values, which the compiled graph does not check
        try:
            bound = self._compiled_bound(batch)
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back to eager, loudly
            self._compile_failed(err)
            return None
        self._compiled_step = True
        return bound

    def _compile_failed(self, err: Exception) -> None:
        rank_zero_warn(
            f"{type(self).__name__}: torch.compile of the training step failed "
            f"({type(err).__name__}: {str(err)[:300]}); training continues eagerly"
        )
        self._compiled_bound = None

    def _step_with_gradients(self, step_batch, last: bool, optimizer) -> tuple[Tensor, Tensor, dict | None]:
        """One step's loss, bound and diagnostics, with the loss's gradients in ``.grad``. A
        compiled step whose backward fails (a graph torch.compile takes forward but not
        backward, such as a double backward) is warned about and run again eagerly."""
        optimizer.zero_grad(set_to_none=True)
        self._compiled_step = False
        loss, bound, diagnostics = self.step_loss(step_batch, last=last)
        self._run_hooks("on_before_backward", loss)
        if loss.requires_grad:  # else the step's gradients were computed in closed form
            try:
                loss.backward()
            except Exception as err:  # noqa: BLE001 - re-raised unless the compiled graph failed
                if not self._compiled_step:
                    raise
                self._compile_failed(err)
                return self._step_with_gradients(step_batch, last, optimizer)
        return loss, bound, diagnostics

    # -- one block --------------------------------------------------------------------------------

    def _optimizer_step(self, optimizer, loss: Tensor) -> None:
        """The optimiser's step, skipped on the device where the loss is not finite (checked steps)."""
        guard = self.nonfinite_guard(loss)
        if guard is not None and hasattr(optimizer, "step_unless"):
            optimizer.step_unless(guard)
        else:
            optimizer.step()

    def _plain_step(self, step_batch, optimizer) -> tuple[Tensor, Tensor]:
        """One optimiser step without per-step hooks or diagnostics (what a CUDA graph captures):
        the loss's gradients, the optimiser's step and the densities' state after it."""
        loss, bound, _ = self._step_with_gradients(step_batch, False, optimizer)
        self._optimizer_step(optimizer, loss)
        self.after_optimizer_step()
        # detached: a CUDA graph keeps its outputs, whose autograd graph would keep the capture's
        # AccumulateGrad nodes alive into later eager steps (torch warns of a stream mismatch)
        return loss.detach(), bound.detach()

    def _run_hooks(self, name: str, *args) -> None:
        for hook, owner in self._step_hooks:
            if hook == name:
                if owner is self:
                    getattr(owner, hook)(*args)
                else:
                    getattr(owner, hook)(self.trainer, self, *args)

    def _block_threads(self) -> int | None:
        if self.step_threads is not None:
            return self.step_threads
        return 1 if self._closed_form_on and self.device.type == "cpu" else None

    def run_block(self, batch) -> list[tuple[Tensor, Tensor, dict | None]]:
        """Run the optimiser steps of one Lightning batch; returns each step's (loss, bound, diagnostics)."""
        trainer = self.trainer
        steps = block_steps(batch)
        if trainer.max_steps >= 0:
            steps = steps[: max(0, trainer.max_steps - trainer.global_step)]
        wrapper = self.optimizers()
        optimizer = wrapper.optimizer
        schedulers = self.lr_schedulers()
        schedulers = [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]
        out = []
        if not steps:
            return out
        with self.checked_block(steps), intra_op_threads(self._block_threads()):
            # a CUDA graph replays a step whose batch values were checked (block or data set)
            graphed = self._graphed_step if not self.validate_inputs or values_are_prechecked() else None
            for i, step_batch in enumerate(steps):
                last = i == len(steps) - 1
                replayed = None
                if graphed is not None and not (last and self._logs_after_this_step()) and self.step_is_stationary():
                    replayed = graphed(step_batch, optimizer)
                if replayed is not None:  # gradients, optimiser step and after_optimizer_step done
                    (loss, bound), diagnostics = replayed, None
                    wrapper._on_before_step()
                    wrapper._on_after_step()
                    for scheduler in schedulers:
                        scheduler.step()
                else:
                    loss, bound, diagnostics = self._step_with_gradients(step_batch, last, optimizer)
                    self._run_hooks("on_after_backward")
                    wrapper._on_before_step()
                    self._run_hooks("on_before_optimizer_step", optimizer)
                    self._optimizer_step(optimizer, loss)
                    wrapper._on_after_step()
                    for scheduler in schedulers:
                        scheduler.step()
                    self.after_optimizer_step()
                out.append((loss.detach(), bound.detach(), diagnostics))
        if len(out) > 1:
            # Lightning adds 1 per batch; loggers and log_every_n_steps then count optimiser steps
            trainer.fit_loop.epoch_loop._batches_that_stepped += len(out) - 1
        return out
