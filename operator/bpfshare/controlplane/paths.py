"""Where the control plane lives on disk: the binary cache and the state directory of ``cluster up``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$BPFSHARE_CACHE_DIR``, else ``$XDG_CACHE_HOME/bpfshare``, else ``~/.cache/bpfshare``."""
    override = os.environ.get("BPFSHARE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bpfshare"


def default_state_dir() -> Path:
    """State of ``bpfshare cluster up``: ``$BPFSHARE_CLUSTER_DIR``, else ``<cache root>/cluster``."""
    override = os.environ.get("BPFSHARE_CLUSTER_DIR")
    return Path(override).expanduser() if override else cache_root() / "cluster"
