r"""Layer 3: closed-form training steps replayed from a TorchScript trace.

A closed-form step (:meth:`~eim_lightning.densities.Density.closed_form_gradients`: SNIS, LARS
and HIS) is a fixed sequence of small tensor operations, about seventy for a 2-D SNIS step and
four hundred for HIS, with no data-dependent control flow. Run eagerly, every operation also
pays for Python: parsing its arguments, and the code between operations (module calls, list
building, attribute lookups). ``torch.jit.trace`` records the sequence once, in a fraction of a
second, and TorchScript's interpreter replays it without any of that. The replay runs with the
executor's graph optimisations off (``torch.jit.optimized_execution(False)``): with them HIS's
replay ran slower when tried, and without them the interpreter runs exactly the recorded
operations. So the operations and their inputs are the
same, and the replay's bound and gradients are bitwise those of the eager step, random draws
included: they come from the same default generator, in the same order.

:class:`TracedClosedForm` traces at the first step it serves, for that batch's shape, dtype and
device; a batch of another shape (an epoch's last, partial batch) runs eagerly. Before the trace
is used, its first two replays are compared with the eager step from the same random state, and
the random state is then put back, so the run draws exactly what an eager run draws. A
difference, or any failure to trace, warns once and the fit continues eagerly. ``torch.jit`` is
deprecated in favour of ``torch.compile``, which costs tens of seconds of compilation on a CPU
where the trace costs milliseconds; a torch without it falls back the same way.
"""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ..densities import Density

__all__ = ["TracedClosedForm"]


class _PureStep(nn.Module):
    """``x -> (bound, *gradients, *saved)`` of a density's closed form; remembers whose gradients
    they are."""

    def __init__(self, density: Density) -> None:
        super().__init__()
        self.density = density
        self.gradient_of: list[Tensor] = []

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        bound, pairs, saved = self.density.closed_form_gradients(x)
        self.gradient_of = [p for p, _ in pairs]
        return (bound, *(g for _, g in pairs), *saved)


class TracedClosedForm:
    """A density's closed-form training step replayed from its trace (module doc).

    Args:
        density: a density that implements
            :meth:`~eim_lightning.densities.Density.closed_form_gradients` (its pure closed form).
        owner: the name the warning gives if tracing fails.
    """

    def __init__(self, density: Density, owner: str) -> None:
        self.density, self.owner = density, owner
        self._step = _PureStep(density)
        self._traced = None
        self._key: tuple | None = None
        self._failed = False

    def __getstate__(self) -> dict:
        """Pickled (``torch.save`` of a whole module, ``deepcopy``) without the trace, which
        TorchScript cannot pickle; a copy traces again at its first step."""
        return {**self.__dict__, "_traced": None, "_key": None}

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor | None:
        """The training bound ``[B]`` of ``x`` with the loss's gradients added to the parameters'
        ``.grad`` and the density's state kept (as
        :meth:`~eim_lightning.densities.Density.closed_form_training_bound` does, without
        diagnostics), or None where no trace serves this batch: the caller then runs the eager
        step."""
        if self._failed:
            return None
        key = (x.shape, x.dtype, x.device)
        if self._key is not None and key != self._key:
            return None
        self.density.check_input(x)
        if self._traced is None and not self._trace(x, key):
            return None
        with torch.jit.optimized_execution(False):
            bound, *rest = self._traced(x)
        n = len(self._step.gradient_of)
        self.density.add_gradients(zip(self._step.gradient_of, rest[:n]))
        self.density.closed_form_finish(tuple(rest[n:]), False)
        return bound

    def _trace(self, x: Tensor, key: tuple) -> bool:
        cuda = [x.device] if x.device.type == "cuda" else []
        try:
            with warnings.catch_warnings(), torch.random.fork_rng(devices=cuda), torch.jit.optimized_execution(False):
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape tests, constant per shape
                traced = torch.jit.trace(self._step, (x,), check_trace=False)
                for _ in range(2):
                    with torch.random.fork_rng(devices=cuda):
                        expected = self._step(x)
                    for a, b in zip(expected, traced(x), strict=True):
                        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
        except Exception as err:  # noqa: BLE001 - any tracing failure: the eager step, loudly
            self._failed = True
            rank_zero_warn(
                f"{self.owner}: the closed-form training step could not be traced "
                f"({type(err).__name__}: {str(err)[:300]}); it runs eagerly"
            )
            return False
        self._traced, self._key = traced, key
        return True
