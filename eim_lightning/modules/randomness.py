r"""Layer 3: the random streams of training, so that results are reproducible.

* **Exact resume**: every process's torch (and CUDA) random state is saved in checkpoints and
  restored when training resumes, after Lightning's sanity-check validation, so a resumed run
  draws the same negatives as an uninterrupted one.
* **Evaluation does not perturb training**: validation runs inside Lightning's ``isolate_rng``
  (entered at ``on_validation_start``, left at ``on_validation_end``), so the training
  trajectory does not depend on how often it is validated. Image callbacks do the same.
* **One stream per process**: under several processes, each rank's torch stream is reseeded at
  every ``setup`` (fit, validate, test) from ``(seed, rank)`` (the seed of ``seed_everything``,
  else torch's initial seed), so ranks draw different negatives even when every rank was seeded
  alike (Lightning's DDP strategy resets every rank to the ``seed_everything`` seed when each
  ``fit``/``test`` starts). A single process keeps its stream untouched.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import torch
from lightning.pytorch.utilities.seed import isolate_rng

__all__ = ["RandomStateMixin", "rank_seed"]

_MASK64 = (1 << 64) - 1


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for process ``rank`` of a run seeded with ``seed`` (splitmix64 of both)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(rank) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class RandomStateMixin:
    """Saves, restores, isolates and separates the module's random streams (see the module doc)."""

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def separate_rank_streams(self) -> None:
        """At ``setup`` under several processes: reseed this rank from (seed, rank)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        torch.manual_seed(rank_seed(seed, trainer.global_rank))

    def on_validation_start(self) -> None:
        self._validation_rng = ExitStack()
        self._validation_rng.enter_context(isolate_rng())

    def on_validation_end(self) -> None:
        stack = getattr(self, "_validation_rng", None)
        if stack is not None:
            stack.close()
            self._validation_rng = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save every process's random-number state, so a resumed run draws the same negatives."""
        state = self._rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["eim_rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("eim_rng_states")
        rank = self.trainer.global_rank if self._trainer is not None else 0
        # restored when training (re)starts, after Lightning's sanity-check validation
        self._rng_to_restore = states[rank] if states and rank < len(states) else None

    def restore_rng_on_train_start(self) -> None:
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            self._set_rng_state(state)
            self._rng_to_restore = None
