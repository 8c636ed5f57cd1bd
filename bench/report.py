"""Appending a script's section to its Markdown page (``docs/...``), for the probes whose page
collects one section per run."""

from __future__ import annotations

from pathlib import Path


def append_section(path: Path, title: str, section: str) -> None:
    """Append ``section`` to the Markdown file ``path`` after a blank line; a missing file starts
    with ``title``."""
    old = path.read_text() if path.exists() else title
    path.write_text(old.rstrip("\n") + "\n\n" + section)
