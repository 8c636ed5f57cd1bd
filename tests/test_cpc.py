"""CPC / InfoNCE as a conditional SNIS model (ALGORITHMS.md 4), checked on correlated Gaussian pairs
whose mutual information is known in closed form: the estimate is at most log K always, below the
true MI in expectation, close to it for K >> e^I with the optimal or a trained critic; it is the
SNIS bound minus log p(x); and with two processes it is the bound on the concatenated batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from datamodules import CorrelatedGaussianDataModule
from eim_lightning import CPC
from eim_lightning.bounds import snis_lower_bound
from eim_lightning.nn import MLP

REPO = Path(__file__).resolve().parents[1]


class OptimalCritic(nn.Module):
    """``f(x, c) = log p(c | x) - log p(c)``, the Bayes-optimal InfoNCE critic."""

    def __init__(self, dm: CorrelatedGaussianDataModule) -> None:
        super().__init__()
        self.dm = dm

    def forward(self, x, context):
        return self.dm.log_density_ratio(x, context)


def test_correlated_gaussian_datamodule_has_the_stated_correlation_and_mutual_information():
    dm = CorrelatedGaussianDataModule(dim=3, mutual_information=1.5, batch_size=64, steps_per_epoch=2, seed=4)
    assert dm.mutual_information == pytest.approx(1.5, rel=1e-12)
    assert dm.event_shape == (3,) and dm.context_shape == (3,)
    x, c = dm.sample(200_000, torch.Generator().manual_seed(0))
    n = x.shape[0]
    corr = ((x - x.mean(0)) * (c - c.mean(0))).mean(0) / (x.std(0) * c.std(0))
    assert ((corr - dm.rho).abs() < 5 * (1 - dm.rho**2) / math.sqrt(n)).all(), (corr, dm.rho)
    # I = E[log p(c|x) - log p(c)]: a Monte Carlo check of the closed form
    ratio = dm.log_density_ratio(x.double(), c.double())
    assert float(ratio.mean()) == pytest.approx(dm.mutual_information, abs=5 * float(ratio.std()) / math.sqrt(n))
    # fixed evaluation sets, full batches, fresh and reproducible training batches
    val = list(dm.val_dataloader())
    assert all(b[0].shape == (dm.eval_batch_size, 3) for b in val) and len(val) == dm.val_size // dm.eval_batch_size
    torch.testing.assert_close(next(iter(dm.val_dataloader()))[1], val[0][1])
    first, second = list(dm.train_dataloader())
    assert first[0].shape == (64, 3) and not torch.equal(first[0], second[0])
    torch.testing.assert_close(next(iter(dm.train_dataloader()))[0], first[0])
    with pytest.raises(ValueError, match="rho must be in"):
        CorrelatedGaussianDataModule(rho=1.0)


def test_info_nce_is_the_snis_bound_minus_log_p_and_the_critic_paths_agree():
    """InfoNCE_i = L_SNIS(x_i | c_i) - log p(x_i) with the batch's other x as the K - 1 negatives,
    computed by the layer-1 SNIS bound with log pi = 0; a general critic's K x B score matrix
    equals the pairwise loop."""
    torch.manual_seed(0)
    module = CPC(x_dim=2, c_dim=3, hidden_sizes=[8], embedding_dim=4).double()
    x, c = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    s, positive = module.scores(x, c)
    for j in range(6):
        for i in range(6):
            torch.testing.assert_close(s[j, i], module.critic(x[j], c[i]), atol=1e-12, rtol=0)
    off_diagonal = s.T[~torch.eye(6, dtype=torch.bool)].reshape(6, 5).T  # [K-1, B]
    expected = snis_lower_bound(torch.zeros(6, dtype=torch.float64), s.diagonal(), off_diagonal)
    torch.testing.assert_close(module.info_nce(x, c), expected, atol=1e-12, rtol=0)
    assert float(module.mutual_information_lower_bound(x, c).detach()) == pytest.approx(
        float(expected.mean().detach()), abs=1e-12
    )
    # a concatenation critic (no embed_x / embed_c) through the general path
    general = CPC(x_dim=2, c_dim=3, critic=MLP(2, [8], 1, context_dim=3)).double()
    s, _ = general.scores(x, c)
    loop = torch.stack([torch.stack([general.critic(x[j], c[i])[0] for i in range(6)]) for j in range(6)])
    torch.testing.assert_close(s, loop, atol=1e-12, rtol=0)


def test_optimal_critic_estimate_is_capped_by_log_k_below_the_mi_and_close_for_large_k():
    """With the optimal critic, over M batches for each K: every batch's estimate <= log K; the mean is
    below min(I, log K) + 3 SE; for K = 1024 >> e^I = 7.4 the mean is within 20 % of I (here 5 %)."""
    dm = CorrelatedGaussianDataModule(dim=2, mutual_information=2.0)
    module = CPC(x_dim=2, c_dim=2, critic=OptimalCritic(dm)).double()
    gen = torch.Generator().manual_seed(1)
    means = {}
    for K, M in [(4, 400), (64, 60), (1024, 12)]:
        x, c = dm.sample(K * M, gen)
        est = torch.stack(
            [module.mutual_information_lower_bound(xb, cb) for xb, cb in zip(x.double().split(K), c.double().split(K))]
        )
        assert (est <= math.log(K) + 1e-12).all()
        mean, se = float(est.mean()), float(est.std()) / math.sqrt(M)
        assert mean < min(dm.mutual_information, math.log(K)) + 3 * se, (K, mean, se)
        means[K] = mean
    assert means[4] < means[64] < means[1024]
    assert abs(means[1024] - dm.mutual_information) < 0.05 * dm.mutual_information, means


def test_trained_critic_comes_within_20_percent_of_the_true_mi(make_trainer):
    """300 Adam steps on batches of 256 pairs (I = 2 nats), then InfoNCE with K = 512 on fresh
    pairs: within 20 % of I, and not above it (3 SE)."""
    dm = CorrelatedGaussianDataModule(
        dim=2,
        mutual_information=2.0,
        batch_size=256,
        steps_per_epoch=300,
        val_size=512,
        test_size=512,
        eval_batch_size=512,
    )
    module = CPC(x_dim=2, c_dim=2, hidden_sizes=[32], embedding_dim=16, lr=3e-3)
    trainer = make_trainer(max_steps=300, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    x, c = dm.sample(512 * 16, torch.Generator().manual_seed(5))
    with torch.no_grad():
        est = torch.stack([module.mutual_information_lower_bound(xb, cb) for xb, cb in zip(x.split(512), c.split(512))])
    mean, se = float(est.mean()), float(est.std()) / 4
    assert mean < dm.mutual_information + 3 * se
    assert mean > 0.8 * dm.mutual_information, mean
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    assert 0.8 * dm.mutual_information < result["test/mi_lower_bound"] <= math.log(512)


def test_batches_must_be_pairs_and_the_conditional_model_samples():
    module = CPC(x_dim=2, c_dim=2, num_proposals=16)
    with pytest.raises(TypeError, match="batches of pairs"):
        module.training_bound(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expected input of shape"):
        module.training_bound((torch.zeros(4, 3), torch.zeros(4, 2)))
    samples = module.density.sample(5, context=torch.zeros(3, 2))  # q(x | c), SNIS with the N(0, I) proposal
    assert samples.shape == (5, 3, 2)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from eim_lightning import CPC

    class Recording(CPC):
        def training_bound(self, batch):
            bound, diagnostics = super().training_bound(batch)
            self.recorded = bound.detach().clone()
            return bound, diagnostics

        def on_after_backward(self):
            grads = {k: p.grad.detach().clone() for k, p in self.named_parameters() if p.grad is not None}
            record = {"bound": self.recorded, "grads": grads, "rank": self.global_rank}
            torch.save(record, f"{sys.argv[1]}/rank{self.global_rank}.pt")

    class Halves(L.LightningDataModule):
        def train_dataloader(self):
            torch.manual_seed(0)
            x = torch.randn(16, 2)
            c = 0.8 * x + 0.6 * torch.randn(16, 2)
            r = self.trainer.global_rank
            return DataLoader([(x[8 * r : 8 * r + 8], c[8 * r : 8 * r + 8])], batch_size=None)

    if __name__ == "__main__":
        torch.manual_seed(0)
        module = Recording(x_dim=2, c_dim=2, hidden_sizes=[8], embedding_dim=4)
        trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(module, datamodule=Halves())
    """
)


@pytest.mark.slow
def test_two_processes_gather_negatives_with_gradients_and_equal_the_single_process_bound(tmp_path):
    """DDP with gloo on two CPU processes, 8 pairs each: every process's per-example InfoNCE uses all
    16 x as negatives and equals the single-process bound on the concatenated batch; the averaged
    gradients (through the all-gathered embeddings g(x)) equal the single-process gradient."""
    script = tmp_path / "cpc_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    torch.manual_seed(0)
    x = torch.randn(16, 2)
    c = 0.8 * x + 0.6 * torch.randn(16, 2)
    torch.manual_seed(0)
    single = CPC(x_dim=2, c_dim=2, hidden_sizes=[8], embedding_dim=4)
    bound = single.info_nce(x, c)
    (-bound.mean()).backward()
    torch.testing.assert_close(torch.cat([ranks[0]["bound"], ranks[1]["bound"]]), bound.detach(), atol=1e-5, rtol=1e-5)
    # without the other process's negatives the bound would differ (K = 8 instead of 16)
    assert not torch.allclose(single.info_nce(x[:8], c[:8]).detach(), ranks[0]["bound"], atol=1e-3)
    for name, p in single.named_parameters():
        for r in ranks:
            assert name in r["grads"], (
                f"{name} got no gradient on rank {r['rank']} (are the gathered embeddings differentiable?)"
            )
            torch.testing.assert_close(
                r["grads"][name], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )
