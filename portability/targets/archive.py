"""Tar archives for put/get on kinds whose engine moves files as tar streams
(the Docker archive API; `tar` through the agent in a VM)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO


def pack(local: Path, name: str) -> bytes:
    """A tar of ``local`` (file or tree) stored under ``name``, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(str(local), arcname=name, filter=_root_owned)
    return buf.getvalue()


def unpack(archive: BinaryIO, name: str, local: Path) -> None:
    """Extract member ``name`` (a file or tree) of a tar stream to ``local``.

    An existing directory at ``local`` receives a tree's contents; anything else is replaced.
    """
    local.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive) as tar, \
            tempfile.TemporaryDirectory(dir=local.parent, prefix=".portability-get-") as tmp:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(tmp, filter="tar")
        else:  # a Python without extraction filters (< 3.10.12 / 3.11.4)
            tar.extractall(tmp)
        extracted = Path(tmp) / name
        if local.is_dir() and extracted.is_dir():
            merge_tree(extracted, local)
        else:
            if local.is_dir():
                shutil.rmtree(local)
            os.replace(extracted, local)


def merge_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` into ``dst``; an existing ``dst`` keeps its own mode.

    (``shutil.copytree`` would give it the source's mode: merging into /tmp would make it 0755.)
    """
    mode = dst.stat().st_mode if dst.is_dir() else None
    shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
    if mode is not None:
        os.chmod(dst, mode)


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info
