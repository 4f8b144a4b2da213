"""Node-level ``bpfshare`` subcommands, each in its own module, imported lazily by ``bpfshare.cli``."""
