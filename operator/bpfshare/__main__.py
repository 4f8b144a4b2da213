"""``python -m bpfshare``: the same as the ``bpfshare`` command."""

from bpfshare.cli import main

main()
