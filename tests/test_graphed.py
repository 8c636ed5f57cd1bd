"""The whole training step as a CUDA graph (eim_lightning/modules/graphed.py, the engine's
``cuda_graphs``), the parts a CPU can check.

A graph replays the step the engine would run eagerly (``_plain_step``); here a stand-in that runs
that step eagerly takes the graph's place, so the engine's replay branch (its bookkeeping of
steps, logs, validation, checkpoints and learning-rate milestones) is compared with the eager
branch bit for bit. The capture's training-state copy and its comparison are checked against
hand-made changes. Then :class:`GraphedStep`'s whole protocol (warm-up, state written back,
eager reference, capture, checked first replay, capture again at a new learning rate, the
fallback) runs with ``torch.cuda``'s graph API played on the CPU by a perfect graph, and by one
that fails to capture or replays other random numbers: training must equal the eager run bit for
bit in all three. The real graphs are in tests/test_gpu.py (``pytest -m gpu``).
"""

from __future__ import annotations

import contextlib

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import quiet_trainer
from datamodules import BinarizedMNISTDataModule, Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS, VAE
from eim_lightning.modules.graphed import TOLERANCE, GraphedStep, TrainingState, batch_key
from eim_lightning.optim import Adam
from jobs.shrink import EVERY_KIND_OF_CONFIG, short_fit_cli
from test_engine import fit_in_blocks


class _EagerStandIn:
    """In a graph's place: the step a graph would capture, run eagerly, counted."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, 0

    def __call__(self, batch, optimizer):
        self.calls += 1
        return self.module._plain_step(batch, optimizer)


def _stepping(cls, make):
    """``cls`` whose steps go to ``make(module)`` in a graph's place (on the CPU, where the automatic
    choice takes no graph)."""

    class Stepping(cls):
        def prepare_graphed_step(self) -> None:
            super().prepare_graphed_step()
            assert self._graphed_step is None
            self._graphed_step = make(self)

    return Stepping


def _graph_of(module) -> GraphedStep:
    return GraphedStep(module._plain_step, module, type(module).__name__)


class _Record(L.Callback):
    """The steps validation ran at and every step's loss from the module's outputs (no per-step
    hook, which would rule a graph out)."""

    def __init__(self) -> None:
        self.val_steps, self.losses = [], []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_steps.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses += [float(loss) for loss in outputs["step_losses"]]


def _fit(tmp_path, cls, name, **kwargs):
    """:func:`test_engine.fit_in_blocks` in blocks of 8 with a learning-rate milestone at step 20."""
    return fit_in_blocks(tmp_path, cls, 8, recorder=_Record(), name=name, lr_milestones=[20], **kwargs)


def _metrics(path):
    (csv,) = path.glob("version_*/metrics.csv")
    return csv.read_text()


@pytest.mark.parametrize(
    "cls, kwargs",
    [(SNIS, dict(num_proposals=32)), (LARS, dict(T=32, num_z_samples=32)), (HIS, dict(T=2))],
)
def test_the_replay_branch_trains_logs_and_checkpoints_exactly_as_the_eager_branch(tmp_path, cls, kwargs):
    eager, t_eager, val_eager, ck_eager = _fit(tmp_path, cls, "eager", **kwargs)
    replayed, t_replayed, val_replayed, ck_replayed = _fit(
        tmp_path, _stepping(cls, _EagerStandIn), "replayed", **kwargs
    )
    # every step but the four whose diagnostics are logged (steps 7, 15, 23, 31) took the replay branch
    assert replayed._graphed_step.calls == 37 - 4
    assert t_eager.global_step == t_replayed.global_step == 37
    assert all(torch.equal(p, q) for p, q in zip(eager.parameters(), replayed.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(eager.buffers(), replayed.buffers()))  # LARS's Z too
    opt_e, opt_r = t_eager.optimizers[0], t_replayed.optimizers[0]
    assert opt_e.param_groups[0]["lr"] == opt_r.param_groups[0]["lr"] == pytest.approx(3e-4 / 3)  # the milestone
    assert val_eager.val_steps == val_replayed.val_steps == [16, 32]
    assert len(val_replayed.losses) == 37 and val_replayed.losses == val_eager.losses  # replayed steps' too
    assert ck_eager == ck_replayed == sorted(f"step={s}.ckpt" for s in (8, 16, 24, 32))
    assert _metrics(tmp_path / "eager") == _metrics(tmp_path / "replayed")


def test_no_graph_off_a_gpu_and_cuda_graphs_true_there_is_a_clear_error(tmp_path):
    model = SNIS(num_proposals=8)
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=2))
    assert model._graphed_step is None
    with pytest.raises(ValueError, match=r"cuda_graphs=True\) needs a CUDA device, but it trains on cpu"):
        quiet_trainer(tmp_path, max_steps=2).fit(
            SNIS(num_proposals=8, cuda_graphs=True), datamodule=Toy2DDataModule(steps_per_epoch=2)
        )


@pytest.mark.parametrize("value", ["yes", 1, 0])
def test_cuda_graphs_must_be_none_true_or_false(value):
    with pytest.raises(ValueError, match="cuda_graphs must be None"):
        SNIS(cuda_graphs=value)


def _trained_pair():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # parameters and buffers
    optimizer = Adam(net.parameters(), lr=1e-2)

    def step():
        optimizer.zero_grad()
        net(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()

    step()  # the optimiser has state
    return net, optimizer, step


def test_the_training_state_is_written_back_in_place_random_states_included():
    net, optimizer, step = _trained_pair()
    tensors = TrainingState.tensors_of(net, optimizer)
    values, pointers = [t.detach().clone() for t in tensors], [t.data_ptr() for t in tensors]
    assert len(tensors) == 4 + 3 + 3 * 4  # parameters, BatchNorm's buffers, Adam's step and moments
    state = TrainingState(net, optimizer)
    expected_draw = torch.rand(5)
    torch.set_rng_state(state.cpu_rng)
    for _ in range(3):
        step()
    assert not all(torch.equal(t, v) for t, v in zip(tensors, values))
    state.restore()
    assert all(torch.equal(t, v) for t, v in zip(TrainingState.tensors_of(net, optimizer), values))
    assert [t.data_ptr() for t in TrainingState.tensors_of(net, optimizer)] == pointers
    assert torch.equal(torch.rand(5), expected_draw)


def test_the_first_replay_check_flags_a_changed_tensor_loss_or_random_state_and_passes_rounding():
    net, optimizer, step = _trained_pair()
    loss, bound = torch.tensor(-2.0), torch.tensor([-1.0, -3.0])
    state = TrainingState(net, optimizer)
    reference = (loss.clone(), bound.clone())
    assert state.differences(loss, bound, reference) == []
    weight = net[0].weight
    scale = float(weight.abs().max())
    with torch.no_grad():
        weight[0, 0] += 0.1 * TOLERANCE * scale  # rounding-sized: below the tolerance
    assert state.differences(loss, bound, reference) == []
    with torch.no_grad():
        weight[0, 0] += 10 * TOLERANCE * scale
    assert state.differences(loss, bound, reference) == ["state tensor 0"]
    state.restore()
    assert state.differences(loss, bound + 0.5, reference) == ["bound"]
    assert state.differences(loss * float("nan"), bound, reference) == ["loss"]
    torch.rand(1)
    assert state.differences(loss, bound, reference) == ["CPU random state"]


def test_a_batch_off_the_models_device_or_with_an_unhashable_leaf_gets_no_graph():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert batch_key(torch.zeros(4, 2), meta) is None
    assert batch_key({"steps": [torch.zeros(4, 2)]}, meta) is None
    assert batch_key([1, {3}], cpu) is None
    assert batch_key(torch.zeros(4, 2), cpu) == batch_key(torch.ones(4, 2), cpu)  # the values do not matter
    assert batch_key(torch.zeros(4, 2), cpu) != batch_key(torch.zeros(5, 2), cpu)
    assert batch_key(torch.zeros(4, 2), cpu) != batch_key(torch.zeros(4, 2, dtype=torch.float64), cpu)
    assert batch_key([1, {"a": []}], cpu) == batch_key([1, {"a": []}], cpu)
    assert batch_key([1, 2], cpu) != batch_key([1, 3], cpu) and batch_key([1, 2], cpu) != batch_key((1, 2), cpu)


# -- the capture's protocol, with torch.cuda's graph API played on the CPU -----------------------


class _PerfectGraph:
    """``torch.cuda.CUDAGraph`` on the CPU: capturing records the step (and, as a capture executes
    nothing, leaves the training state as it was); a replay runs it on the static inputs and
    writes the outputs in place. ``before_replay`` runs first at every replay (a broken graph)."""

    capturing: _PerfectGraph | None = None
    made: list[_PerfectGraph] = []
    before_replay = None

    def __init__(self) -> None:
        self.step, self.outputs = None, None
        _PerfectGraph.made.append(self)

    def replay(self) -> None:
        if _PerfectGraph.before_replay is not None:
            _PerfectGraph.before_replay()
        values = self.step()
        with torch.no_grad():
            for output, value in zip(self.outputs, values):
                output.copy_(value)


class _Stream:
    def wait_stream(self, other) -> None:
        pass


def _play_cuda_graphs_on_the_cpu(monkeypatch, fail_capture: bool = False) -> None:
    eager = GraphedStep._eager

    def recorded(self, batch, optimizer):
        graph = _PerfectGraph.capturing
        if graph is None:
            return eager(self, batch, optimizer)
        state = TrainingState(self.module, optimizer)
        graph.outputs = eager(self, batch, optimizer)
        graph.step = lambda: eager(self, batch, optimizer)
        state.restore()
        return graph.outputs

    @contextlib.contextmanager
    def capture(graph):
        if fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        _PerfectGraph.capturing = graph
        try:
            yield
        finally:
            _PerfectGraph.capturing = None

    monkeypatch.setattr(GraphedStep, "_eager", recorded)
    monkeypatch.setattr(_PerfectGraph, "made", [])
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _PerfectGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", _Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())


@pytest.mark.parametrize("cls, kwargs", [(SNIS, dict(num_proposals=32)), (LARS, dict(T=32, num_z_samples=32))])
def test_a_graph_is_captured_once_per_learning_rate_and_its_replays_train_exactly_as_eager_steps(
    tmp_path, monkeypatch, cls, kwargs
):
    _play_cuda_graphs_on_the_cpu(monkeypatch)
    eager, _, eager_record, _ = _fit(tmp_path, cls, "eager", **kwargs)
    graphed, trainer, record, checkpoints = _fit(tmp_path, _stepping(cls, _graph_of), "graphed", **kwargs)
    step = graphed._graphed_step
    assert not step.failed and len(_PerfectGraph.made) == 2  # captured again at the milestone (step 20)
    # every step but the four logged ones (7, 15, 23, 31) was served from a graph
    assert step.replays == 37 - 4
    assert all(torch.equal(p, q) for p, q in zip(eager.parameters(), graphed.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(eager.buffers(), graphed.buffers()))
    assert record.val_steps == [16, 32] and checkpoints == sorted(f"step={s}.ckpt" for s in (8, 16, 24, 32))
    assert len(record.losses) == 37 and record.losses == eager_record.losses  # the replayed steps' losses too
    assert _metrics(tmp_path / "eager") == _metrics(tmp_path / "graphed")


@pytest.mark.parametrize("broken", ["capture", "replay"])
def test_a_graph_that_fails_or_differs_from_the_eager_step_warns_and_training_loses_nothing(
    tmp_path, monkeypatch, broken
):
    _play_cuda_graphs_on_the_cpu(monkeypatch, fail_capture=broken == "capture")
    if broken == "replay":  # a graph that draws other random numbers than the eager step
        monkeypatch.setattr(_PerfectGraph, "before_replay", staticmethod(lambda: torch.rand(1)))
    kwargs = dict(T=32, num_z_samples=32)
    eager, *_ = _fit(tmp_path, LARS, "eager", **kwargs)
    why = "capturing it failed" if broken == "capture" else "its first replay differed from the eager step in"
    with pytest.warns(UserWarning, match=f"runs without a CUDA graph: {why}"):
        graphed, *_ = _fit(tmp_path, _stepping(LARS, _graph_of), "graphed", **kwargs)
    assert graphed._graphed_step.failed
    assert all(torch.equal(p, q) for p, q in zip(eager.parameters(), graphed.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(eager.buffers(), graphed.buffers()))
    assert _metrics(tmp_path / "eager") == _metrics(tmp_path / "graphed")


def _warmup_vae_fit(tmp_path, name, data_dir, cls=VAE):
    L.seed_everything(0, verbose=False)
    model = cls(latent_dim=4, hidden_sizes=(16,), kl_warmup_steps=6)
    dm = BinarizedMNISTDataModule("static", root=str(data_dir), train_subset=64, val_subset=16, batch_size=16)
    quiet_trainer(tmp_path / name, max_steps=12, log_every_n_steps=50).fit(model, datamodule=dm)
    return model


def test_a_vae_in_its_kl_warm_up_steps_eagerly_and_a_graph_serves_the_steps_after(tmp_path, monkeypatch, data_dir):
    """The KL weight is a number the captured step would keep: no graph while it changes."""
    _play_cuda_graphs_on_the_cpu(monkeypatch)
    eager = _warmup_vae_fit(tmp_path, "eager", data_dir)
    graphed = _warmup_vae_fit(tmp_path, "graphed", data_dir, cls=_stepping(VAE, _graph_of))
    step = graphed._graphed_step
    # steps 0-5 (beta = 0, 1/6, ..., 5/6) eagerly; captured at step 6 (beta = 1) and replayed to step 11
    assert not step.failed and len(_PerfectGraph.made) == 1 and step.replays == 6
    assert all(torch.equal(p, q) for p, q in zip(eager.parameters(), graphed.parameters()))


class _Regression(torch.nn.Module):
    """A least-squares step on the CPU: what :class:`GraphedStep` needs of a module (its device)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)
        self.device = torch.device("cpu")

    def step(self, batch, optimizer):
        optimizer.zero_grad(set_to_none=True)
        x, y = batch
        bound = -(self.linear(x)[:, 0] - y).square()
        loss = -bound.mean()
        loss.backward()
        optimizer.step()
        return loss, bound


def test_a_graph_replays_its_own_shape_runs_other_shapes_eagerly_and_captures_again_at_a_new_rate(monkeypatch):
    _play_cuda_graphs_on_the_cpu(monkeypatch)
    graphed_model, eager_model = _Regression(), _Regression()
    graphed_opt, eager_opt = (Adam(m.parameters(), lr=1e-2) for m in (graphed_model, eager_model))
    step = GraphedStep(graphed_model.step, graphed_model, "Regression")
    torch.manual_seed(1)
    batches = [(torch.randn(n, 3), torch.randn(n)) for n in (4, 4, 5, 4, 4)]
    for i, batch in enumerate(batches):
        if i == 3:
            for optimizer in (graphed_opt, eager_opt):
                optimizer.param_groups[0]["lr"] = 5e-3
        expected_loss, expected_bound = eager_model.step(batch, eager_opt)
        served = step(batch, graphed_opt)
        if served is None:  # the engine's eager step
            assert i == 2  # the batch of 5
            served = graphed_model.step(batch, graphed_opt)
        assert torch.equal(served[0], expected_loss) and torch.equal(served[1], expected_bound)
    assert len(_PerfectGraph.made) == 2 and step.replays == 4  # captured at steps 0 and 3, replayed at 1 and 4
    assert all(torch.equal(p, q) for p, q in zip(graphed_model.parameters(), eager_model.parameters()))
    outputs = step._outputs
    assert step(batches[0], graphed_opt)[0] is not outputs[0]  # a copy: the next replay overwrites the graph's


# -- what a graph captures reads nothing back to the host ------------------------------------------

#: the tensor methods that copy values to the host (on a GPU a synchronisation a capture refuses)
_HOST_READS = (
    "__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu", "nonzero", "masked_select",
    "unique",
)  # fmt: skip
#: torch functions that size their output by the values
_SIZED_BY_VALUES = ("nonzero", "masked_select", "unique", "argwhere")


def _refuse(name):
    def method(*args, **kwargs):
        raise AssertionError(f"the step reads a tensor on the host ({name})")

    return method


def _refuse_boolean_masks(method):
    def indexing(self, index, *rest):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
            raise AssertionError("the step reads a tensor on the host (indexing by a boolean mask)")
        return method(self, index, *rest)

    return indexing


class _RefuseHostData(TorchDispatchMode):
    """Refuses a tensor made from Python values (``torch.tensor``, ``as_tensor`` of numbers, the
    number arguments of ``torch.distributions``): on a GPU that is a copy from the host, which a
    CUDA graph cannot capture."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            raise AssertionError("the step copies host data to the device (a tensor made from Python values)")
        return func(*args, **(kwargs or {}))


class _HostReadDetector:
    """In a graph's place: the step a graph would capture, run with every host read refused (the
    tensor methods and torch functions that read values, indexing by a boolean mask) and every
    tensor made from host values (:class:`_RefuseHostData`)."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, 0

    def __call__(self, batch, optimizer):
        self.calls += 1
        patches = [(torch.Tensor, name, _refuse(f"Tensor.{name}")) for name in _HOST_READS]
        patches += [(torch, name, _refuse(f"torch.{name}")) for name in _SIZED_BY_VALUES]
        patches += [
            (torch.Tensor, n, _refuse_boolean_masks(getattr(torch.Tensor, n))) for n in ("__getitem__", "__setitem__")
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, method in patches:
                setattr(owner, name, method)
            with _RefuseHostData():
                outputs = self.module._plain_step(batch, optimizer)
        finally:
            for owner, name, method in saved:
                setattr(owner, name, method)
        # a graph keeps its outputs: with their autograd graph they would keep its nodes alive
        assert all(t.grad_fn is None for t in outputs), "the step's loss or bound keeps its autograd graph"
        return outputs


def _detect_host_reads(model) -> None:
    model.prepare_graphed_step = lambda: setattr(model, "_graphed_step", _HostReadDetector(model))


@pytest.mark.parametrize(
    "read, name",
    [
        (lambda x: bool(x.sum() > 0), "Tensor.__bool__"),
        (lambda x: x.sum().item(), "Tensor.item"),
        (lambda x: torch.nonzero(x), "torch.nonzero"),
        (lambda x: x[x > 0], "boolean mask"),
        (lambda x: x.__setitem__(x > 0, 0.0), "boolean mask"),
        (lambda x: x + torch.tensor(1.0), "host data"),
        (lambda x: torch.distributions.Normal(x, 1.0, validate_args=False).log_prob(x), "host data"),
    ],
)
def test_the_detector_catches_a_host_read_and_puts_every_method_back(read, name):
    step = type("Step", (), {"_plain_step": lambda self, batch, optimizer: read(batch)})()
    with pytest.raises(AssertionError, match=name):
        _HostReadDetector(step)(torch.ones(3), None)
    x = torch.tensor([1.0, -1.0])
    assert x.sum().item() == 0.0 and torch.equal(x[x > 0], torch.tensor([1.0])) and bool(x.any())


@pytest.mark.parametrize("name", ["SNIS", "TRS", "HIS", "LARS", "Gaussian"])
def test_the_2d_steps_a_gpu_graph_captures_read_nothing_back_to_the_host(name, tmp_path):
    import eim_lightning

    kwargs = {"SNIS": dict(num_proposals=32), "TRS": dict(T=32), "HIS": dict(T=2), "LARS": dict(T=32, num_z_samples=32)}
    L.seed_everything(0, verbose=False)
    model = getattr(eim_lightning, name)(closed_form=False, **kwargs.get(name, {}))  # the autograd step, as on a GPU
    _detect_host_reads(model)
    quiet_trainer(tmp_path, max_steps=20, log_every_n_steps=10).fit(
        model, datamodule=Toy2DDataModule(steps_per_epoch=20)
    )
    assert model._graphed_step.calls == 18  # all but the two logged steps


# not fivo_vrnn_sines: it clips gradients, so it trains on Lightning's loop, without a graph
@pytest.mark.parametrize("config", [c for c in EVERY_KIND_OF_CONFIG if c != "unify/fivo_vrnn_sines.yaml"])
def test_the_config_steps_a_gpu_graph_captures_read_nothing_back_to_the_host(config, tmp_path, data_dir):
    cli = short_fit_cli(config, tmp_path, "cpu", data_root=data_dir)
    cli.model.closed_form = False
    _detect_host_reads(cli.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model._graphed_step.calls > 0
