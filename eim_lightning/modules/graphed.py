r"""Layer 3: the whole training step captured once into a CUDA graph and replayed.

On a GPU the optimiser step of a small model is a few hundred kernel launches of microseconds
each, and the CPU that launches them, one Python call at a time, is the bottleneck, not the GPU.
A CUDA graph (:class:`torch.cuda.CUDAGraph`) records the launches once; a replay is one call.
:class:`GraphedStep` captures a whole optimiser step as the engine runs it without per-step
hooks: the bound and loss, the backward pass (or the closed-form gradients), the non-finite
flag, the fused Adam step (skipped on the device for a non-finite loss) and the densities' state
after the step (LARS's moving-average Z). Before each replay the step's batch is copied into the
graph's static input tensors; after it the loss and bound are copied out (the next replay
overwrites the graph's own).

**Capture**, at the first step a graph serves (and again when the learning rates change; a batch
of another shape than the first captured one, such as an epoch's last, partial batch, runs
eagerly): the training state (parameters, buffers, the optimiser's state and the CPU and CUDA
random states) is copied; :data:`WARMUP_STEPS` eager steps run on a side stream (lazy
allocations, library handles and any compilation happen there, as CUDA graphs need); the state
is written back in place (the graph reads and writes these very tensors); one eager step from it
is kept as the reference and written back too; the step is captured and replayed once. That
replay is compared with the reference: the loss, the bound, every tensor of the training state
(a gradient's random draws show in Adam's moments) to 1e-3 of each tensor's largest value, and
the random states exactly. A difference, or any failure, warns once, puts the state back and
the fit continues eagerly.

**Random numbers**: a replay reads the CUDA generator's seed and offset when it starts and
advances the offset by what the step draws, as the eager step does (torch's graph-safe Philox
state): a replayed step draws the numbers the eager step would, and checkpoints save and
restore the CUDA random state as usual.

The engine decides where graphs are used (``cuda_graphs`` in :mod:`.engine`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..densities.base import values_prechecked

__all__ = ["GraphedStep", "TrainingState", "WARMUP_STEPS", "batch_key"]

#: eager steps run on a side stream before a capture (PyTorch's CUDA graph recipe uses a few)
WARMUP_STEPS = 3
#: the largest difference between the first replay and the eager reference, relative to each
#: tensor's largest magnitude (floating-point sums on a GPU may add in another order)
TOLERANCE = 1e-3


class TrainingState:
    """A copy of everything an optimiser step changes: ``module``'s parameters and buffers, the
    optimiser's state tensors and the CPU and CUDA random states; :meth:`restore` writes it back
    *in place*, so that tensors others hold (a CUDA graph, an optimiser) see the values."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.tensors = self.tensors_of(module, optimizer)
        self.copies = [t.detach().clone() for t in self.tensors]
        devices = sorted({t.device.index or 0 for t in self.tensors if t.device.type == "cuda"})
        self.cuda_rng = {d: torch.cuda.get_rng_state(d) for d in devices}
        self.cpu_rng = torch.get_rng_state()

    @staticmethod
    def tensors_of(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, Tensor)]
        return [*module.parameters(), *module.buffers(), *states]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, copy in zip(self.tensors, self.copies):
                tensor.copy_(copy)
        torch.set_rng_state(self.cpu_rng)
        for device, state in self.cuda_rng.items():
            torch.cuda.set_rng_state(state, device)

    def differences(self, loss: Tensor, bound: Tensor, reference: tuple[Tensor, Tensor]) -> list[str]:
        """What differs between the present state with ``loss, bound`` and this copy with the
        ``reference`` loss and bound (the names of the tensors, empty when they agree)."""
        pairs = [("loss", loss, reference[0]), ("bound", bound, reference[1])]
        pairs += [(f"state tensor {i}", t, c) for i, (t, c) in enumerate(zip(self.tensors, self.copies))]
        out = [name for name, a, b in pairs if not _close(a, b)]
        if not torch.equal(torch.get_rng_state(), self.cpu_rng):
            out.append("CPU random state")
        for device, state in self.cuda_rng.items():
            if not torch.equal(torch.cuda.get_rng_state(device), state):
                out.append(f"CUDA random state of device {device}")
        return out


def _close(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` is ``b`` to :data:`TOLERANCE` of ``b``'s largest finite magnitude (non-finite
    numbers in the same places)."""
    if a.shape != b.shape:
        return False
    a, b = a.detach().double(), b.detach().double()
    finite = torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), finite):
        return False
    if not bool(finite.any()):
        return True
    return float((a - b)[finite].abs().max()) <= TOLERANCE * float(b[finite].abs().max())


def batch_key(batch, device: torch.device) -> tuple | None:
    """What a graph's static inputs depend on: the batch's structure and each tensor's shape and
    dtype (its other leaves by value); None where a graph cannot serve it (a leaf that is not
    hashable, a tensor off the model's ``device``)."""
    leaves, spec = pytree.tree_flatten(batch)
    key = []
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            if leaf.device != device:
                return None
            key.append((tuple(leaf.shape), leaf.dtype))
        else:
            try:
                hash(leaf)
            except TypeError:
                return None
            key.append(leaf)
    return (str(spec), tuple(key))


@contextlib.contextmanager
def _capturable_autocast():
    """Autocast as it is, with its weight-cast cache off: a CUDA graph must not capture a cache
    that outlives the capture (PyTorch's CUDA graph notes)."""
    if not torch.is_autocast_enabled("cuda"):
        yield
        return
    with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
        yield


def _learning_rates(optimizer: torch.optim.Optimizer) -> tuple:
    return tuple(float(group["lr"]) for group in optimizer.param_groups)


class GraphedStep:
    """An optimiser step captured into a CUDA graph at its first call and replayed (module doc).

    Args:
        step: ``(batch, optimizer) -> (loss, bound)``, one whole optimiser step without host
            synchronisations or per-step Python that must run at every step.
        module: the module whose parameters and buffers the step changes.
        owner: the name warnings give.

    Attributes:
        replays: the steps served from a graph so far (each capture's checked replay included).
        failed: whether a capture failed or differed from the eager step (no graph from then on).
    """

    def __init__(self, step: Callable, module: nn.Module, owner: str) -> None:
        self.step, self.module, self.owner = step, module, owner
        self._graph: torch.cuda.CUDAGraph | None = None
        self._batch_key: tuple | None = None
        self._learning_rates: tuple | None = None
        self._static: list[Tensor] = []
        self._outputs: tuple[Tensor, Tensor] | None = None
        self.failed = False
        self.replays = 0

    def __getstate__(self) -> dict:
        """Pickled (``deepcopy`` of a module) without the graph, which is captured again."""
        return {**self.__dict__, "_graph": None, "_batch_key": None, "_static": [], "_outputs": None}

    def __call__(self, batch, optimizer: torch.optim.Optimizer) -> tuple[Tensor, Tensor] | None:
        """This step's ``(loss, bound)`` with the step taken, or None where no graph serves it: a
        batch of another structure or shape than the first captured one (an epoch's last, partial
        batch), one off the model's device, or a capture that failed. The caller then runs the step
        eagerly. A change of the learning rates captures again."""
        if self.failed:
            return None
        key = batch_key(batch, self.module.device)
        if key is None or (self._batch_key is not None and key != self._batch_key):
            return None
        learning_rates = _learning_rates(optimizer)
        if self._graph is None or learning_rates != self._learning_rates:
            return self._capture(batch, optimizer, key, learning_rates)
        with torch.no_grad():
            for static, tensor in zip(self._static, (t for t in pytree.tree_leaves(batch) if isinstance(t, Tensor))):
                static.copy_(tensor)
        self._graph.replay()
        self.replays += 1
        return self._outputs[0].clone(), self._outputs[1].clone()

    def _eager(self, batch, optimizer) -> tuple[Tensor, Tensor]:
        with values_prechecked(), _capturable_autocast():
            return self.step(batch, optimizer)

    def _capture(self, batch, optimizer, key: tuple, learning_rates: tuple) -> tuple[Tensor, Tensor] | None:
        self._graph, self._static, self._outputs = None, [], None
        lean_plan = getattr(optimizer, "_lean_plan", None)
        if callable(lean_plan):
            lean_plan()  # the optimiser's state exists before it is copied (as its first step makes it)
        before = TrainingState(self.module, optimizer)
        try:
            static_batch = pytree.tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, batch)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._eager(static_batch, optimizer)
            torch.cuda.current_stream().wait_stream(side)
            before.restore()
            reference = tuple(t.detach().clone() for t in self._eager(static_batch, optimizer))
            after = TrainingState(self.module, optimizer)
            before.restore()
            optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._eager(static_batch, optimizer)
            graph.replay()
            differences = after.differences(*outputs, reference)
        except Exception as err:  # noqa: BLE001 - any capture failure: eager steps, loudly
            before.restore()
            return self._give_up(f"capturing it failed ({type(err).__name__}: {str(err)[:300]})")
        if differences:
            before.restore()
            return self._give_up(f"its first replay differed from the eager step in {', '.join(differences[:5])}")
        self._graph, self._batch_key, self._learning_rates, self._outputs = graph, key, learning_rates, outputs
        self._static = [t for t in pytree.tree_leaves(static_batch) if isinstance(t, Tensor)]
        self.replays += 1
        return outputs[0].clone(), outputs[1].clone()

    def _give_up(self, why: str) -> None:
        self.failed = True
        rank_zero_warn(f"{self.owner}: the training step runs without a CUDA graph: {why}; training continues eagerly")
        return None
