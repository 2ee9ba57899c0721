"""Disk images for ``rootfs: container:IMAGE`` — a container image's filesystem as an ext4 image.

This is the other half of the kernel matrix: a Debian 11 userland (a container image the
project already builds) on a 6.12 kernel, or any other pairing that tells a kernel
divergence from a userland one. The image is exported once through the Docker Engine API
(docker-py), unpacked with GNU tar (owners, modes and setuid bits kept) and written with
``mkfs.ext4 -d`` (no loop mount, no root-only tools beyond unpacking owners), then cached
by image id.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from portability.paths import cache_dir

PREFIX = "container:"


class RootfsError(Exception):
    """The container image cannot be turned into a disk image (the message says why)."""


def from_container_image(image: str, *, engine_url: str | None = None,
                         labels: dict[str, str] | None = None) -> Path:
    """The cached ext4 image of ``image``'s filesystem, built when missing."""
    import docker
    from docker import errors as derr

    for tool in ("mkfs.ext4", "tar"):
        if shutil.which(tool) is None:
            raise RootfsError(f"turning a container image into a disk image needs {tool} "
                              "(apt-get install e2fsprogs tar)")
    try:
        client = (docker.DockerClient(base_url=engine_url, timeout=300) if engine_url
                  else docker.from_env(timeout=300))
    except derr.DockerException as exc:
        raise RootfsError(_unreachable(exc)) from None
    try:
        image_id = client.images.get(image).id
    except derr.DockerException as exc:
        client.close()
        if isinstance(exc, derr.ImageNotFound):
            raise RootfsError(f"container image {image} is not present; build or pull it first") from None
        raise RootfsError(_unreachable(exc)) from None
    digest = image_id.split(":")[-1][:16]
    target = cache_dir("qemu", "rootfs") / f"{digest}.ext4"
    # Targets of one session start in parallel: build each image once.
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            client.close()
            return target
        return _build(client, image, image_id, target, labels)


def _build(client, image: str, image_id: str, target: Path, labels: dict[str, str] | None) -> Path:
    from docker import errors as derr

    work = Path(tempfile.mkdtemp(prefix="portability-rootfs-", dir=target.parent))
    container_id = None
    try:
        container_id = client.api.create_container(image_id, command=["/bin/true"],
                                                   labels=labels or {})["Id"]
        tar_path = work / "fs.tar"
        with open(tar_path, "wb") as out:
            for chunk in client.api.export(container_id):
                out.write(chunk)
        client.api.remove_container(container_id, force=True)
        container_id = None
        tree = work / "tree"
        tree.mkdir()
        _run(["tar", "-x", "--numeric-owner", "-p", "-f", str(tar_path), "-C", str(tree)],
             f"unpacking {image}")
        tar_path.unlink()
        # The engine's markers would make the guest look like a container.
        for marker in (".dockerenv", "run/.containerenv"):
            (tree / marker).unlink(missing_ok=True)
        size_mib = _tree_mib(tree) * 5 // 4 + 64
        tmp_image = work / "root.ext4"
        _run(["mkfs.ext4", "-q", "-F", "-i", "8192", "-L", "portability-root", "-d", str(tree),
              str(tmp_image), f"{size_mib}M"], f"writing the ext4 image of {image}")
        tmp_image.replace(target)
        prune(target.parent, "*.ext4", keep=_KEPT)
    except derr.DockerException as exc:
        raise RootfsError(f"exporting {image} failed: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # a full or unwritable cache
        raise RootfsError(f"writing the disk image of {image} under {target.parent} failed: "
                          f"{exc.strerror or exc}") from None
    finally:
        if container_id is not None:
            try:
                client.api.remove_container(container_id, force=True)
            except derr.DockerException:
                pass
        client.close()
        shutil.rmtree(work, ignore_errors=True)
    return target


#: Each image is a few hundred MB: keep the most recently built few. (Using an image must
#: not touch its mtime: snapshots are keyed on it.)
_KEPT = 8


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Keep the ``keep`` most recently modified files matching ``pattern`` (cached images, states)."""
    files = sorted(directory.glob(pattern), key=_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another session's prune
        return 0.0


def _unreachable(exc: Exception) -> str:
    return (f"the Docker Engine is unreachable ({str(exc).splitlines()[0]}); "
            "a container:IMAGE rootfs is exported through it")


def _tree_mib(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
            except OSError:
                pass
    return total // (1024 * 1024) + 1


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise RootfsError(f"{what} failed: {detail}")
