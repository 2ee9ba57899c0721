"""Target kinds. Each kind lives in one module behind the protocol in ``base.py``.

Modules are imported on first use so that a run over local targets never imports
docker-py, paramiko or the QEMU machinery.
"""

from __future__ import annotations

import importlib

from portability.targets.base import Command, Result, Spec, Target

#: kind name -> module defining ``TARGET`` (the Target subclass; its ``Spec`` is the options).
KIND_MODULES: dict[str, str] = {
    "local": "portability.targets.local",
    "container": "portability.targets.container",
    "ssh": "portability.targets.ssh",
    "vagrant": "portability.targets.vagrant",
    "qemu": "portability.targets.qemu",
}


def target_class(kind: str) -> type[Target]:
    """The Target subclass implementing ``kind`` (KeyError for an unknown kind)."""
    module = importlib.import_module(KIND_MODULES[kind])
    return module.TARGET


__all__ = ["Command", "Result", "Spec", "Target", "KIND_MODULES", "target_class"]
