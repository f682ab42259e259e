"""``python -m paperpost``: the same as the ``paperpost`` command."""

from paperpost.cli import main

main()
