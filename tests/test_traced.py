"""Closed-form training steps replayed from a TorchScript trace (``eim_lightning.modules.traced``):
bitwise the eager closed form, random draws and LARS's Z included, or the eager step with a warning."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from datamodules import Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS
from eim_lightning import densities as D
from eim_lightning.modules import traced as traced_module
from eim_lightning.modules.traced import TracedClosedForm
from eim_lightning.nn import MLP
from eim_lightning.optim import Adam

DENSITIES = {
    "snis": lambda: D.SNIS(D.Normal(2), MLP(2, [20, 20], 1), num_proposals=64),
    "his": lambda: D.HIS(D.Normal(2), MLP(2, [20, 20], 1), MLP(2, [20], 4), T=3),
    "his_standard_momentum": lambda: D.HIS(D.Normal(2), MLP(2, [8], 1, activation="softplus"), T=1),
    "lars": lambda: D.LARS(D.Normal(2), MLP(2, [20, 20], 1), T=64, num_z_samples=64).train(),
}


def _adam_steps(density, batches, traced: bool):
    """Adam steps on ``batches`` through the trace (asserting it served) or the eager closed form,
    with the density's own update after each (LARS's Z); the final parameters, buffers and bounds."""
    optimizer = Adam(density.parameters(), lr=1e-2)
    tracer = TracedClosedForm(density, "test") if traced else None
    bounds = []
    torch.manual_seed(1)
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        if tracer is not None:
            bound = tracer(x)
            assert bound is not None
        else:
            bound, _ = density.closed_form_training_bound(x, False)
        bounds.append(bound)
        optimizer.step()
        density.after_optimizer_step(lambda z: z)
    return [t.detach().clone() for t in (*density.parameters(), *density.buffers())], bounds


@pytest.mark.parametrize("name", sorted(DENSITIES))
@pytest.mark.parametrize("batch", [100, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traced_steps_are_bitwise_the_eager_closed_form(name, batch, dtype):
    """Twenty Adam steps through the trace end at exactly the eager closed form's weights (and
    LARS's moving-average Z), with exactly its bounds: the same operations on the same inputs and
    the same random draws (the trace follows the parameters as Adam updates them in place; with
    ``x.shape[0]``, a tensor under a trace, a batch of 100 once differed in HIS's float64
    gradients: ``1/B`` rounded in float32)."""
    batches = [torch.randn(batch, 2, generator=torch.Generator().manual_seed(i), dtype=dtype) for i in range(20)]
    runs = []
    for traced in (True, False):
        torch.manual_seed(0)
        density = DENSITIES[name]().to(dtype)
        runs.append(_adam_steps(density, batches, traced))
    (p_traced, b_traced), (p_eager, b_eager) = runs
    for a, b in zip([*p_traced, *b_traced], [*p_eager, *b_eager], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # LARS's z_eval: NaN until evaluated


def test_a_batch_of_another_shape_runs_eagerly_and_tracing_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    density = DENSITIES["snis"]()
    tracer = TracedClosedForm(density, "test")
    x = torch.randn(32, 2)
    torch.manual_seed(5)
    assert tracer(x) is not None  # traced here, checked against the eager step, then replayed
    after_traced_step = torch.rand(3)
    torch.manual_seed(5)
    density.closed_form_training_bound(x, False)
    assert torch.equal(torch.rand(3), after_traced_step)  # the trace and its checks drew nothing
    assert tracer(torch.randn(31, 2)) is None  # the partial batch: the caller's eager step
    assert tracer(x.double()) is None


def test_a_failed_trace_warns_once_and_the_step_runs_eagerly(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(traced_module.torch.jit, "trace", broken)
    tracer = TracedClosedForm(DENSITIES["his"](), "HIS")
    with pytest.warns(UserWarning, match="HIS: the closed-form training step could not be traced.*no TorchScript"):
        assert tracer(torch.randn(8, 2)) is None
    assert tracer(torch.randn(8, 2)) is None  # no second attempt, no second warning


def test_a_module_with_a_trace_still_pickles_and_its_copy_traces_again(tmp_path):
    """``torch.save`` of a whole fitted module (TorchScript cannot pickle the trace, so it is
    left out) and the copy's next step traces afresh, bitwise the original's."""
    module = SNIS(num_proposals=16)
    quiet_trainer(tmp_path, max_steps=60, limit_val_batches=0).fit(
        module, datamodule=Toy2DDataModule(steps_per_epoch=60)
    )
    tracer = module._traced_closed_form
    assert tracer._traced is not None
    path = tmp_path / "module.pt"
    torch.save(module, path)
    copy = torch.load(path, weights_only=False)._traced_closed_form
    assert copy._traced is None and copy.density is not module.density
    x = torch.randn(128, 2)
    results = []
    for t in (tracer, copy):
        torch.manual_seed(3)
        results.append(t(x))
    assert copy._traced is not None and torch.equal(*results)


class _OwnClosedForm(D.SNIS):
    """A closed form of its own, not split into a pure part (``closed_form_gradients``)."""

    closed_form_gradients = D.Density.closed_form_gradients

    def closed_form_training_bound(self, x, diagnostics=True):
        bound, pairs, saved = D.SNIS.closed_form_gradients(self, x)
        self.add_gradients(pairs)
        return bound, self.closed_form_finish(saved, diagnostics)


def test_only_densities_with_a_pure_closed_form_are_traced(tmp_path):
    """A density whose closed form is not split into a pure part trains in closed form, untraced."""
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=32)
    models = [SNIS(num_proposals=8), SNIS(density=_OwnClosedForm(D.Normal(2), MLP(2, [4], 1), num_proposals=8))]
    for model in models:
        quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, data)
    assert all(model._closed_form_on for model in models)
    assert models[0]._traced_closed_form._traced is not None and models[1]._traced_closed_form is None
    with pytest.raises(ValueError, match="trace must be True or False"):
        SNIS(trace="yes")


@pytest.mark.parametrize("cls", [SNIS, HIS, LARS])
def test_training_through_the_trace_is_bitwise_eager_training(tmp_path, cls):
    """``Trainer.fit`` with ``trace=True`` (the default) and ``False``: the same weights to the
    last bit, including an epoch's last, partial batch (eager) and the logging steps (eager, for
    their diagnostics), and LARS's moving-average Z; each was replayed from its trace."""
    data = Toy2DDataModule().target.sample(1000, torch.Generator().manual_seed(0))
    sizes = {SNIS: {"num_proposals": 32}, LARS: {"T": 16, "num_z_samples": 16}, HIS: {"T": 2}}[cls]

    def train(trace):
        torch.manual_seed(0)
        model = cls(num_val_samples=2, trace=trace, **sizes)
        loader = DataLoader(TensorDataset(data), batch_size=64)  # 15 full batches and one of 40
        quiet_trainer(tmp_path, max_steps=60, limit_val_batches=0, log_every_n_steps=7).fit(model, loader)
        return model

    fast, slow = train(True), train(False)
    assert fast._closed_form_on and slow._closed_form_on
    assert fast._traced_closed_form._traced is not None and slow._traced_closed_form is None
    for a, b in zip([*fast.parameters(), *fast.buffers()], [*slow.parameters(), *slow.buffers()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


class _Arithmetic(torch.nn.Module):
    """Numbers the trace records as 0-d constants: a float64 ``0.1`` and an int64 ``3``."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)

    def forward(self, x):
        return (self.inner(x) * 0.1 + x * 3,)


def _scalar_casts(fn, x) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(x)
    events = prof.key_averages(group_by_input_shape=True)
    return sum(e.count for e in events if e.key == "aten::to" and e.input_shapes[0] == [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_flattened_replay_skips_the_casts_of_recorded_numbers_and_computes_the_same(dtype):
    """``_flattened`` inlines the submodule and stores ``0.1`` and ``3`` in the dtype their
    arithmetic reads them in, so the replay casts no number; in bfloat16, whose kernels read a
    number in float32, they stay as recorded. The results are bitwise the trace's either way."""
    module = _Arithmetic().to(dtype)
    x = torch.randn(64, 2, dtype=dtype)
    with torch.no_grad(), torch.jit.optimized_execution(False), pytest.warns(FutureWarning):
        traced = torch.jit.trace(module, (x,), check_trace=False)
    flat = traced_module._flattened(traced)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.equal(flat(x)[0], traced(x)[0])
        assert _scalar_casts(traced, x) == (1 if dtype == torch.float64 else 2)  # 0.1 is float64 already
        assert _scalar_casts(flat, x) == (2 if dtype == torch.bfloat16 else 0)


def test_without_the_graph_api_the_trace_serves_as_recorded(monkeypatch):
    def missing(traced):
        raise AttributeError("module 'torch._C' has no attribute '_create_function_from_graph'")

    monkeypatch.setattr(traced_module, "_flattened", missing)
    batches = [torch.randn(64, 2, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    runs = []
    for traced in (True, False):
        torch.manual_seed(0)
        runs.append(_adam_steps(DENSITIES["his"](), batches, traced))
    for a, b in zip(*(params + bounds for params, bounds in runs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
