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
included: they come from the same default generator, in the same order. The recording is
replayed as one flat function (:func:`_flattened`): the submodules' calls inlined, and the
numbers the trace stored as 0-d tensors kept in the dtype their arithmetic reads them in, which
saves a cast per number and replay (about thirty in LARS's step).

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


#: arithmetic whose 0-d tensor constants :func:`_flattened` may store in its result's dtype
_ARITHMETIC = frozenset({"aten::mul", "aten::add", "aten::sub", "aten::rsub", "aten::div", "aten::where"})
#: result dtypes whose arithmetic reads a number in that very dtype (a bfloat16 kernel reads it in float32)
_EXACT_DTYPES = {"Float": torch.float32, "Double": torch.float64}


def _retyped_dtype(node) -> torch.dtype | None:
    """The dtype a 0-d tensor constant of the graph is cast to at every use, where all its uses are
    :data:`_ARITHMETIC` operands (a ``where``'s values, not its condition) with one result dtype of
    :data:`_EXACT_DTYPES`; else None."""
    dtypes = set()
    for use in node.output().uses():
        user = use.user
        result = user.output().type()
        if user.kind() not in _ARITHMETIC or (user.kind() == "aten::where" and use.offset == 0):
            return None
        if not isinstance(result, torch._C.TensorType):
            return None
        dtypes.add(_EXACT_DTYPES.get(result.scalarType()))
    return dtypes.pop() if len(dtypes) == 1 else None


def _flattened(traced: torch.jit.ScriptModule):
    """The trace as one function of ``x``: the submodules' calls inlined (HIS's closed form calls
    dozens), and every number the trace recorded as a 0-d tensor constant (``x * 0.5`` records a
    float64 ``0.5``, ``n * s`` with a Python int ``n`` an int64 tensor) stored in the dtype its
    arithmetic casts it to at every replay, so the replay skips those casts. Reading the number
    in that dtype is what the kernels do, so the results are the same; :class:`TracedClosedForm`
    checks that they are, bitwise. Uses torch's graph API (``torch._C``)."""
    graph = traced.inlined_graph
    for node in list(graph.nodes()):
        if node.kind() != "prim::Constant" or not isinstance(node.output().type(), torch._C.TensorType):
            continue
        value = node.t("value")
        dtype = _retyped_dtype(node) if value.dim() == 0 else None
        if dtype is None or dtype == value.dtype:
            continue
        with graph.insert_point_guard(node):
            retyped = graph.insertConstant(value.to(dtype))
        node.output().replaceAllUsesWith(retyped)
        node.destroy()
    function, module = torch._C._create_function_from_graph("closed_form_step", graph), traced._c
    return lambda x: function(module, x)


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
                try:
                    traced = _flattened(traced)
                except Exception:  # noqa: BLE001 - a torch without this graph API: the trace as recorded
                    pass
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
