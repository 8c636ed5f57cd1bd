"""``python -m eim_lightning`` is the ``eim`` command line."""

from .cli import main

main()
