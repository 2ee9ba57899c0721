"""Base images for container targets, built locally because no registry is reachable.

Each catalog image is a root filesystem built on this machine (``debootstrap`` from Debian's
archive, or Debian's static busybox), packed as a tarball and imported through the Docker
Engine API (docker-py), never the docker CLI. The tarball is cached under
``cache_dir("images")`` keyed by the recipe's hash, so rebuilding after ``docker rmi`` is an
import of a few seconds; ``--force`` builds the root filesystem again (fresh security updates).

Every image carries the labels ``io.portability.image=<name>`` and
``io.portability.source=<recipe hash>``; an image whose source label differs from the
current recipe is reported as stale by ``portability images list`` and rebuilt by ``build``.

    portability images list
    portability images build portability/debian:12 portability/busybox:latest
    portability images build --all [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from portability.errors import PortabilityError
from portability.paths import cache_dir

IMAGE_LABEL = "io.portability.image"
SOURCE_LABEL = "io.portability.source"

#: Bump when the build procedure changes in a way that changes the produced root filesystem,
#: so cached tarballs and images built by older code count as stale.
RECIPE_VERSION = 1

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Removed from debootstrapped trees: nothing a test needs, half the size of a minbase image.
_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log",
    "usr/share/doc/*/*",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "debootstrap",
)

#: Kept empty rather than removed: dpkg and apt expect these directories.
_KEEP_DIRS = ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log",
              "usr/share/doc", "usr/share/man")

#: Debian's Docker images ship this so apt does not refill the trimmed directories.
_DPKG_EXCLUDES = """\
# portability: keep the image small, as Debian's own container images do
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """How one catalog image is made. Everything that shapes the root filesystem is hashed."""

    name: str
    kind: str  # "debootstrap" | "busybox"
    description: str
    suite: str | None = None
    include: tuple[str, ...] = ()
    variant: str = "minbase"

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.rsplit(":", 1)[1]

    def key_material(self) -> dict:
        # Not the name: a recipe under another name (tests) shares the cached root filesystem.
        material = {"recipe_version": RECIPE_VERSION, "kind": self.kind,
                    "changes": self.changes()}
        if self.kind == "debootstrap":
            material.update(suite=self.suite, include=sorted(self.include),
                            variant=self.variant, trim=list(_TRIM), dpkg=_DPKG_EXCLUDES)
        else:
            # The busybox binary comes from the host's busybox-static package: its version is part
            # of the recipe, so an upgraded package makes the image stale.
            material.update(busybox=_busybox_version())
        return material

    def source_hash(self) -> str:
        blob = json.dumps(self.key_material(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def changes(self) -> list[str]:
        """Dockerfile instructions applied at import (the image config)."""
        return [f"ENV PATH={PATH_ENV}", "WORKDIR /", 'CMD ["/bin/sh"]']


def _debian(version: str, suite: str) -> Recipe:
    return Recipe(name=f"portability/debian:{version}", kind="debootstrap", suite=suite,
                  include=("python3",),
                  description=f"Debian {version} ({suite}) minbase + python3, from debootstrap")


CATALOG: dict[str, Recipe] = {
    r.name: r
    for r in (
        _debian("11", "bullseye"),
        _debian("12", "bookworm"),
        _debian("13", "trixie"),
        Recipe(name="portability/busybox:latest", kind="busybox",
               description="static busybox from Debian's busybox-static: no Python, no glibc"),
    )
}

_print_lock = threading.Lock()


# ----------------------------------------------------------------------------- public API


def resolve(name: str) -> Recipe:
    """The catalog recipe for ``name``; accepts the full reference, or it without the
    ``portability/`` prefix or the ``:latest`` tag. Unknown names raise with a did-you-mean."""
    aliases = _aliases()
    if name in aliases:
        return CATALOG[aliases[name]]
    close = difflib.get_close_matches(name, list(aliases), n=1, cutoff=0.6)
    hint = f"did you mean {aliases[close[0]]}? " if close else ""
    raise PortabilityError(f"unknown image {name!r}: {hint}known images: {', '.join(CATALOG)}")


def _aliases() -> dict[str, str]:
    """Every spelling `resolve` accepts: "portability/debian:12", "debian:12", "debian-12",
    "portability/busybox", "busybox"."""
    table: dict[str, str] = {}
    for full in CATALOG:
        short = full.removeprefix("portability/")
        for alias in (full, short, short.replace(":", "-")):
            table[alias] = full
            if alias.endswith(":latest") or alias.endswith("-latest"):
                table[alias[:-len(":latest")]] = full
    return table


def missing_image_hint(name: str) -> str | None:
    """What to tell a user whose target names an absent image; None when the catalog has no
    recipe for it (then only the user knows where the image comes from)."""
    # Exact image references only: `image: busybox` means Docker Hub's busybox, not ours.
    ref = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    if ref not in CATALOG:
        return None
    return f"run `portability images build {ref}` to build it locally"


def exists(name: str, client=None) -> bool:
    """Whether the engine has the image (whatever its source label says)."""
    return _get_image(client or _client(), resolve(name).name) is not None


def status(name: str, client=None) -> str:
    """"present", "stale" (built from an older recipe) or "missing"."""
    recipe = resolve(name)
    client = client or _client()
    image = _get_image(client, recipe.name)
    if image is None:
        return "missing"
    labels = image.labels or {}
    return "present" if labels.get(SOURCE_LABEL) == recipe.source_hash() else "stale"


def build(name: str, *, client=None, force: bool = False, progress: Progress = print) -> str:
    """Build ``name`` (if absent, stale, or ``force``) and import it; return the image id."""
    return build_recipe(resolve(name), client=client, force=force, progress=progress)


def build_recipe(recipe: Recipe, *, client=None, force: bool = False,
                 progress: Progress = print) -> str:
    """``build`` for a recipe outside the catalog (e.g. a catalog recipe under another name)."""
    with _sigterm_as_interrupt():
        return _build_recipe(recipe, client=client, force=force, progress=progress)


def _build_recipe(recipe: Recipe, *, client, force: bool, progress: Progress) -> str:
    client = client or _client()
    # One build of an image at a time across processes (xdist workers all ensuring the busybox
    # image): the second one finds it up to date instead of importing a duplicate.
    lock_name = recipe.name.replace("/", "_").replace(":", "_") + ".build.lock"
    with open(cache_dir("images") / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(recipe, client=client, force=force, progress=progress)


def _build_locked(recipe: Recipe, *, client, force: bool, progress: Progress) -> str:
    source = recipe.source_hash()
    previous = _get_image(client, recipe.name)
    if not force and previous is not None \
            and (previous.labels or {}).get(SOURCE_LABEL) == source:
        progress(f"{recipe.name}: up to date ({previous.id[7:19]})")
        return previous.id
    started = time.monotonic()
    tarball = _rootfs_tarball(recipe, source, force=force, progress=progress)
    try:
        image_id = _import(client, recipe, source, tarball)
    except PortabilityError:
        # The engine refused the tarball: do not serve it from the cache again.
        tarball.unlink(missing_ok=True)
        raise
    if previous is not None and previous.id != image_id:
        _remove_unused(client, previous.id)
    size = tarball.stat().st_size / 1e6
    progress(f"{recipe.name}: imported {image_id[7:19]} ({size:.0f} MB rootfs) "
             f"in {time.monotonic() - started:.1f}s")
    return image_id


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While building, SIGTERM takes the Ctrl-C path, so debootstrap (in a session of its own)
    is stopped and the scratch dir removed. Only where nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ensure(names: Iterable[str], *, client=None, force: bool = False,
           progress: Progress = print, jobs: int = 3) -> dict[str, str]:
    """Build several images, debootstraps in parallel (they wait on the network more than on
    the CPU). Returns {name: image id}; raises the first error after all builds have ended."""
    with _sigterm_as_interrupt():
        return _ensure(names, client=client, force=force, progress=progress, jobs=jobs)


def _ensure(names: Iterable[str], *, client, force: bool, progress: Progress,
            jobs: int) -> dict[str, str]:
    recipes = list(dict.fromkeys(resolve(n) for n in names))
    client = client or _client()

    def locked(message: str) -> None:
        with _print_lock:
            progress(message)

    results: dict[str, str] = {}
    errors: list[PortabilityError] = []
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {r.name: pool.submit(_build_cancellable, r, cancel, client=client, force=force,
                                       progress=locked) for r in recipes}
        try:
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except PortabilityError as exc:
                    errors.append(exc)
        except BaseException:
            # Ctrl-C lands in this thread only: tell the workers to stop their builds (and
            # clean up their scratch dirs) before the pool's exit waits for them.
            cancel.set()
            for future in futures.values():
                future.cancel()
            raise
    if errors:
        raise errors[0]
    return results


_cancel = threading.local()


def _build_cancellable(recipe: Recipe, cancel: threading.Event, **kwargs) -> str:
    _cancel.event = cancel
    try:
        return build_recipe(recipe, **kwargs)
    finally:
        _cancel.event = None


class _Cancelled(PortabilityError):
    pass


# ----------------------------------------------------------------------------- engine


def _client(engine_url: str | None = None):
    import docker

    try:
        client = docker.DockerClient(base_url=engine_url) if engine_url else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = engine_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise PortabilityError(f"Docker Engine at {where} is unreachable ({_why(exc)}); "
                               "start dockerd or set DOCKER_HOST") from None
    return client


def _get_image(client, ref: str):
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise PortabilityError(f"cannot query the Docker Engine for {ref}: "
                               f"{_first_line(exc)}") from None


def _import(client, recipe: Recipe, source: str, tarball: Path) -> str:
    import docker.errors

    # One LABEL per instruction: Podman reads "LABEL a=1 b=2" as a single label a="1 b=2".
    changes = recipe.changes() + [f"LABEL {IMAGE_LABEL}={recipe.name}",
                                  f"LABEL {SOURCE_LABEL}={source}"]
    try:
        client.api.import_image(src=str(tarball), repository=recipe.repository, tag=recipe.tag,
                                changes=changes)
        image = client.images.get(recipe.name)
    except docker.errors.DockerException as exc:
        raise PortabilityError(f"importing {recipe.name} from {tarball} failed: "
                               f"{_first_line(exc)}") from None
    return image.id


def _remove_unused(client, image_id: str) -> None:
    """Drop the image a rebuild replaced, unless a container still uses it (then it stays,
    untagged, until that container is gone: a running target keeps its image)."""
    import docker.errors

    with contextlib.suppress(docker.errors.DockerException):
        client.images.remove(image_id, noprune=False)


# ----------------------------------------------------------------------------- root filesystems


def _rootfs_tarball(recipe: Recipe, source: str, *, force: bool, progress: Progress) -> Path:
    cache = cache_dir("images")
    slug = f"{recipe.kind}-{recipe.suite or 'static'}"
    tarball = cache / f"{slug}-{source}.tar"
    # Serialises builds of one recipe across processes (pytest-xdist workers, two shells).
    with open(cache / f"{slug}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists() and not force:
            progress(f"{recipe.name}: cached rootfs {tarball.name}")
            return tarball
        partial = tarball.with_suffix(f".tmp{os.getpid()}")
        try:
            if recipe.kind == "debootstrap":
                _debootstrap_tarball(recipe, partial, progress)
            else:
                _busybox_tarball(recipe, partial, progress)
            partial.replace(tarball)
        finally:
            partial.unlink(missing_ok=True)
        # Older tarballs of the same image are dead weight once a newer one exists.
        for old in cache.glob(f"{slug}-*.tar"):
            if old != tarball:
                old.unlink(missing_ok=True)
    return tarball


def _debootstrap_tarball(recipe: Recipe, out: Path, progress: Progress) -> None:
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.access("/usr/sbin/debootstrap", os.X_OK) else None)
    if debootstrap is None:
        raise PortabilityError(f"building {recipe.name} needs debootstrap: "
                               "apt-get install debootstrap")
    if os.geteuid() != 0:
        raise PortabilityError(f"building {recipe.name} runs debootstrap, which needs root: "
                               "run `portability images build` as root")
    mirror = os.environ.get("PORTABILITY_DEBIAN_MIRROR", DEFAULT_MIRROR)
    log = cache_dir("images", "logs") / f"{recipe.repository.replace('/', '_')}-{recipe.tag}.log"
    with _scratch_dir(f"portability-image-{recipe.tag}-") as root:
        progress(f"{recipe.name}: debootstrap {recipe.suite} (about a minute; log {log})")
        started = time.monotonic()
        cmd = [debootstrap, f"--variant={recipe.variant}"]
        if recipe.include:
            cmd.append(f"--include={','.join(recipe.include)}")
        cmd += [recipe.suite, str(root), mirror]
        _run_logged(cmd, log, what=f"debootstrap of {recipe.name}")
        progress(f"{recipe.name}: debootstrap done in {time.monotonic() - started:.0f}s")
        _trim(root)
        _tar_dir(root, out, recipe.name)


def _trim(root: Path) -> None:
    for pattern in _TRIM:
        for path in root.glob(pattern):
            if path.name == "copyright" and path.parent.parent.name == "doc":
                continue  # the licences stay, as in Debian's own images
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for keep in _KEEP_DIRS:
        (root / keep).mkdir(parents=True, exist_ok=True)
    dpkg_cfg = root / "etc/dpkg/dpkg.cfg.d"
    dpkg_cfg.mkdir(parents=True, exist_ok=True)
    (dpkg_cfg / "portability-excludes").write_text(_DPKG_EXCLUDES)
    # The engine bind-mounts its own; the builder's would only mislead.
    for name in ("etc/hostname", "etc/resolv.conf"):
        path = root / name
        if path.is_file() and not path.is_symlink():
            path.write_text("")


def _tar_dir(root: Path, out: Path, name: str) -> None:
    # GNU tar keeps devices, hardlinks, xattrs and numeric owners exactly; --one-file-system
    # because a half-torn-down debootstrap may still have /proc mounted inside.
    cmd = ["tar", "--numeric-owner", "--one-file-system", "--sort=name", "-C", str(root),
           "-cf", str(out), "."]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PortabilityError(f"packing the root filesystem of {name} failed: "
                               f"{_last_line(proc.stderr)}")


def _busybox_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "busybox-static"],
                             capture_output=True, text=True)
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "missing"


def _busybox_binary() -> Path:
    if _busybox_version() in ("missing", "unknown"):
        raise PortabilityError("building portability/busybox:latest needs Debian's static busybox: "
                               "apt-get install busybox-static")
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    raise PortabilityError("busybox-static is installed but /bin/busybox is missing: "
                           "apt-get install --reinstall busybox-static")


def _busybox_tarball(recipe: Recipe, out: Path, progress: Progress) -> None:
    binary = _busybox_binary()
    version = _busybox_version()
    applets = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    upstream = version.split(":")[-1].split("-")[0]
    progress(f"{recipe.name}: busybox {version} with {len(applets)} applets")

    files: dict[str, bytes] = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                      b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        # Lets the facts probe name the userland instead of reporting "unknown".
        "etc/os-release": (f'NAME="BusyBox"\nID=busybox\nVERSION_ID={upstream}\n'
                           f'PRETTY_NAME="BusyBox {upstream} (Debian busybox-static {version})"\n'
                           ).encode(),
        "etc/hostname": b"",
        "etc/resolv.conf": b"",
    }
    dirs = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
            "etc": 0o755, "dev": 0o755, "proc": 0o555, "sys": 0o555, "root": 0o700,
            "tmp": 0o1777, "var": 0o755, "var/tmp": 0o1777, "home": 0o755, "run": 0o755}
    mtime = int(binary.stat().st_mtime)  # deterministic: same package, same tarball

    def member(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = kind, mode, mtime
        return info

    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path, mode in dirs.items():
            tar.addfile(member(path, tarfile.DIRTYPE, mode))
        with open(binary, "rb") as fh:
            info = member("bin/busybox", tarfile.REGTYPE, 0o755)
            info.size = binary.stat().st_size
            tar.addfile(info, fh)
        for path, data in files.items():
            info = member(path, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        seen = {"bin/busybox"}
        for applet in sorted(applets):
            path = applet.lstrip("/")
            if path in seen or "/" not in path:  # "linuxrc": an initrd's init, not a command
                continue
            seen.add(path)
            parent = path.rsplit("/", 1)[0]
            if parent not in dirs:
                dirs[parent] = 0o755
                tar.addfile(member(parent, tarfile.DIRTYPE, 0o755))
            link = member(path, tarfile.SYMTYPE, 0o777)
            link.linkname = "/bin/busybox"
            tar.addfile(link)


# ----------------------------------------------------------------------------- processes, scratch


def _run_logged(cmd: list[str], log: Path, *, what: str) -> None:
    """Run ``cmd`` with its output in ``log``; on Ctrl-C let it tear down its own mounts."""
    with open(log, "wb") as out:
        # Own process group: a terminal Ctrl-C reaches us only, and we stop the child in an
        # orderly way (debootstrap unmounts /proc and /sys of the target in its exit trap).
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        cancel = getattr(_cancel, "event", None)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled(f"{what} cancelled") from None
        except BaseException:
            _stop_group(proc)
            raise
    if rc != 0:
        tail = _last_line(log.read_text(errors="replace"))
        raise PortabilityError(f"{what} failed (exit {rc}): {tail} — full log: {log}")


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _scratch_dir(prefix: str) -> Iterator[Path]:
    """A temp dir removed on every exit path, without ever following a mount out of it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PORTABILITY_BUILD_DIR")))
    try:
        yield root
    finally:
        _remove_tree(root)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(root: Path) -> None:
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = _mounts_under(root)
    if left:
        # Deleting through a live mount could delete the host's files: leave the tree.
        raise PortabilityError(f"could not unmount {left[0]}; remove {root} by hand after "
                               f"`umount -l {left[0]}`")
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True)
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)


def _why(exc: Exception) -> str:
    text = str(exc)
    for marker, reason in (("FileNotFoundError", "no such socket"),
                           ("Connection refused", "connection refused"),
                           ("PermissionError", "permission denied on the socket"),
                           ("Timeout", "timed out")):
        if marker in text:
            return reason
    return _first_line(exc)


def _first_line(exc: object) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ----------------------------------------------------------------------------- command line


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``images build`` and ``images list`` to the ``portability`` command's subparsers."""
    images = subparsers.add_parser("images", help="build and list the catalog's base images",
                                   description=__doc__.split("\n\n")[0])
    images.set_defaults(func=lambda args: (images.print_help(), 2)[1])
    sub = images.add_subparsers(dest="images_command", metavar="{build,list}")

    p_build = sub.add_parser("build", help="build catalog images and import them into the engine")
    p_build.add_argument("names", nargs="*", metavar="NAME",
                         help="images to build (see `portability images list`)")
    p_build.add_argument("--all", action="store_true", help="build every catalog image")
    p_build.add_argument("--force", action="store_true",
                         help="build again even if present and up to date (fresh debootstrap)")
    p_build.add_argument("--engine-url", default=None,
                         help="Docker Engine URL (default DOCKER_HOST or the local socket)")
    p_build.add_argument("--jobs", type=int, default=3, help="parallel builds (default 3)")
    p_build.set_defaults(func=_cmd_build)

    p_list = sub.add_parser("list", help="the catalog, and whether each image is in the engine")
    p_list.add_argument("--engine-url", default=None)
    p_list.set_defaults(func=_cmd_list)
    return images


def _cmd_build(args) -> int:
    if args.all and args.names:
        raise PortabilityError("give image names or --all, not both")
    if not args.all and not args.names:
        raise PortabilityError("name the images to build (see `portability images list`) "
                               "or pass --all")
    names = list(CATALOG) if args.all else args.names
    for name in names:
        resolve(name)  # unknown names fail before anything is built
    started = time.monotonic()
    ensure(names, client=_client(args.engine_url), force=args.force, jobs=args.jobs,
           progress=lambda m: print(m, flush=True))
    print(f"{len(names)} image(s) ready in {time.monotonic() - started:.1f}s")
    return 0


def _cmd_list(args) -> int:
    client = _client(args.engine_url)
    width = max(len(n) for n in CATALOG)
    for name, recipe in CATALOG.items():
        print(f"{name:<{width}}  {status(name, client):<8}  {recipe.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m portability.images`` — the same commands without the ``portability`` CLI."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m portability.images")
    images = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["images", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except PortabilityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
