"""Scalars a run logged to TensorBoard, as a Markdown table: e.g. a reproduced row's training and
validation bounds over training (``bench/reproduce.py`` keeps its logs in the run folder's ``logs/``),
to see whether the checkpoint it tested came after a training spike.

Reads every event file under ``FOLDER`` (a resumed run writes a new version folder; a step logged twice
keeps its last value) and prints one row per logged step of the first tag, or per ``--every`` steps of it.

    python bench/tb_scalars.py R/jittered_mnist/vae_gaussian_decoder/seed0/logs --tags val/bound train/bound_epoch
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(folder: Path, tags: list[str]) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` over every event file under ``folder``, in file-name order."""
    found: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        present = accumulator.Tags()["scalars"]
        for tag in tags:
            if tag in present:
                found[tag].update((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def table(scalars: dict[str, dict[int, float]], every: int | None) -> str:
    """Rows at the first tag's steps (every ``every``-th step only, when given); a tag not logged at a step is empty."""
    tags = list(scalars)
    steps = sorted(scalars[tags[0]])
    if every:
        steps = [s for s in steps if (s + 1) % every == 0 or s % every == 0] or steps
    lines = [f"| step | {' | '.join(tags)} |", "|---|" + "---|" * len(tags)]
    for step in steps:
        cells = [f"{scalars[t][step]:.2f}" if step in scalars[t] else "" for t in tags]
        lines.append(f"| {step} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a TensorBoard log folder (searched recursively)")
    parser.add_argument("--tags", nargs="+", required=True, help="scalar tags; rows follow the first")
    parser.add_argument("--every", type=int, help="only steps s with s or s + 1 a multiple of this")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.every is not None and args.every < 1:
        parser.error(f"--every must be a positive number of steps, got {args.every}")
    scalars = read_scalars(args.folder, args.tags)
    missing = [tag for tag, values in scalars.items() if not values]
    if missing:
        parser.error(f"no scalars {missing} under {args.folder}")
    print(table(scalars, args.every))


if __name__ == "__main__":
    main()
