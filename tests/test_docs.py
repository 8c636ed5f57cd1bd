"""The documentation's code runs and the API reference is current."""

import re
import subprocess
import sys
from pathlib import Path

import torch

from datamodules import Toy2DDataModule

REPO = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path, after_heading: str) -> list[str]:
    text = path.read_text()
    section = text.split(after_heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_user_guide_extension_example_trains(make_trainer):
    (code,) = _python_blocks(REPO / "docs" / "USER_GUIDE.md", "## Extending")
    namespace: dict = {}
    exec(compile(code, "USER_GUIDE.md#extending", "exec"), namespace)
    module = namespace["GaussianMixtureModule"](lr=0.05)
    before = module.density.means.detach().clone()
    trainer = make_trainer(max_steps=30, limit_val_batches=1)
    dm = Toy2DDataModule("nine_gaussians", steps_per_epoch=30, val_size=500, eval_batch_size=500)
    trainer.fit(module, datamodule=dm)
    assert not torch.equal(before, module.density.means)
    assert torch.isfinite(trainer.callback_metrics["val/bound"])
    x = module.density.sample(1000)
    assert x.shape == (1000, 2)
    # an exact density: the bound with many replicas is the log-density itself
    torch.testing.assert_close(
        module.density.log_prob_lower_bound(x[:5], num_samples=50), module.density.log_prob(x[:5])
    )


def test_api_reference_is_up_to_date():
    out = subprocess.run([sys.executable, str(REPO / "docs" / "gen_api.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
