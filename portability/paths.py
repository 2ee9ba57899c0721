"""Where the tool keeps things between runs (images, kernels, the agent binary)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$PORTABILITY_CACHE`` or ``$XDG_CACHE_HOME/portability`` (default ~/.cache/portability)."""
    root = os.environ.get("PORTABILITY_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "portability"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
