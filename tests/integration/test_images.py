"""The local image catalog: real builds imported into a real Docker Engine.

The busybox image is built for real under a test-only name (about a second); the Debian images
take a minute each, so their tests check the ones `.ci/setup.sh` built (missing = failure in CI).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import require
from portability import images
from portability.errors import PortabilityError
from portability.session import OWNER_LABEL, SESSION_LABEL, current_owner

REPO = Path(__file__).resolve().parents[2]


def run_in(client, image: str, script: str) -> tuple[int, str]:
    """Run ``sh -c script`` in a throw-away container (network none); always removed."""
    container = client.containers.create(
        image, ["/bin/sh", "-c", script], network_mode="none",
        labels={SESSION_LABEL: f"test-images-{os.getpid()}", OWNER_LABEL: current_owner()})
    try:
        container.start()
        rc = container.wait(timeout=60)["StatusCode"]
        return rc, container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PORTABILITY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


@pytest.fixture
def test_busybox(docker_client):
    """The busybox recipe under a name of its own, so the test never touches the image other
    tests and targets use; the image is removed at the end."""
    recipe = dataclasses.replace(images.CATALOG["portability/busybox:latest"],
                                 name=f"portability-test/busybox:{uuid.uuid4().hex[:10]}")
    yield recipe
    import docker.errors

    try:
        docker_client.images.remove(recipe.name, force=True)
    except docker.errors.ImageNotFound:
        pass


# ----------------------------------------------------------------------------- busybox, for real


@pytest.mark.integration
def test_busybox_image_builds_runs_and_is_labelled(docker_client, private_cache, test_busybox):
    require(shutil.which("busybox") is not None or Path("/bin/busybox").exists(),
            "busybox-static is not installed (apt-get install busybox-static)")
    messages: list[str] = []
    image_id = images.build_recipe(test_busybox, client=docker_client, progress=messages.append)

    image = docker_client.images.get(test_busybox.name)
    assert image.id == image_id
    assert image.labels[images.IMAGE_LABEL] == test_busybox.name
    assert image.labels[images.SOURCE_LABEL] == test_busybox.source_hash()
    config = image.attrs["Config"]
    assert config["Cmd"] == ["/bin/sh"]
    assert config["WorkingDir"] == "/"
    assert f"PATH={images.PATH_ENV}" in config["Env"]

    rc, out = run_in(docker_client, test_busybox.name, """
        . /etc/os-release; echo "id=$ID"
        echo "user=$(id -un) cwd=$(pwd)"
        command -v python3 >/dev/null && echo python=yes || echo python=no
        ls /lib/x86_64-linux-gnu /lib64 >/dev/null 2>&1 && echo glibc=yes || echo glibc=no
        [ -d /tmp ] && [ -k /tmp ] && echo tmp=sticky
        grep -c '^' /etc/passwd | sed 's/^/passwd=/'
        echo hello | tr a-z A-Z | sha256sum | cut -c1-8
        exit 7""")
    assert rc == 7, out
    lines = out.split()
    assert "id=busybox" in lines
    assert "user=root" in lines and "cwd=/" in lines
    assert "python=no" in lines and "glibc=no" in lines
    assert "tmp=sticky" in lines and "passwd=2" in lines
    # The applets really run (not just exist as links).
    assert hashlib.sha256(b"HELLO\n").hexdigest()[:8] in lines


@pytest.mark.integration
def test_rebuild_after_rmi_uses_the_cached_rootfs(docker_client, private_cache, test_busybox):
    first = images.build_recipe(test_busybox, client=docker_client, progress=lambda m: None)
    tarballs = list(private_cache.glob("busybox-static-*.tar"))
    assert len(tarballs) == 1
    before = tarballs[0].stat()

    # Present and current: nothing is rebuilt, the same image comes back.
    messages: list[str] = []
    assert images.build_recipe(test_busybox, client=docker_client,
                               progress=messages.append) == first
    assert any("up to date" in m for m in messages), messages

    docker_client.images.remove(test_busybox.name, force=True)
    messages.clear()
    again = images.build_recipe(test_busybox, client=docker_client, progress=messages.append)
    assert any("cached rootfs" in m for m in messages), messages
    after = tarballs[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    image = docker_client.images.get(test_busybox.name)
    assert image.id == again
    assert image.labels[images.SOURCE_LABEL] == test_busybox.source_hash()
    rc, out = run_in(docker_client, test_busybox.name, "echo rebuilt")
    assert (rc, out.strip()) == (0, "rebuilt")


@pytest.mark.integration
def test_stale_image_is_rebuilt(docker_client, private_cache, test_busybox):
    images.build_recipe(test_busybox, client=docker_client, progress=lambda m: None)
    # An image with another source label (an older recipe) counts as stale and is replaced.
    repo, tag = test_busybox.name.rsplit(":", 1)
    old = docker_client.images.get(test_busybox.name)
    stale_tag = f"{tag}-stale"
    container = docker_client.containers.create(test_busybox.name, ["true"], network_mode="none",
                                                labels={SESSION_LABEL: "test-images"})
    try:
        stale = container.commit(repository=repo, tag=stale_tag,
                                  changes=[f"LABEL {images.SOURCE_LABEL}=0000000000000000"])
    finally:
        container.remove(force=True)
    stale_recipe = dataclasses.replace(test_busybox, name=f"{repo}:{stale_tag}")
    try:
        assert docker_client.images.get(stale_recipe.name).labels[images.SOURCE_LABEL] \
            == "0000000000000000"
        new_id = images.build_recipe(stale_recipe, client=docker_client, progress=lambda m: None)
        assert new_id != stale.id
        assert docker_client.images.get(stale_recipe.name).labels[images.SOURCE_LABEL] \
            == stale_recipe.source_hash()
    finally:
        docker_client.images.remove(stale_recipe.name, force=True)
    # The original test image is untouched by the stale one's rebuild.
    assert docker_client.images.get(test_busybox.name).id == old.id


# ----------------------------------------------------------------------------- Debian images


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n, r in images.CATALOG.items() if r.kind == "debootstrap"])
def test_debian_image_has_its_release_and_python(docker_client, name):
    state = images.status(name, client=docker_client)
    require(state == "present", f"image {name} is {state} (run `portability images build {name}`)")
    recipe = images.CATALOG[name]
    image = docker_client.images.get(name)
    assert image.labels[images.IMAGE_LABEL] == name

    rc, out = run_in(docker_client, name, """
        . /etc/os-release; echo "os=$ID-$VERSION_ID codename=$VERSION_CODENAME"
        python3 -c 'import sys; print("python=%d.%d" % sys.version_info[:2])'
        ls /var/lib/apt/lists | grep -v '^partial$' | wc -l | sed 's/^/apt_lists=/'
        ls /usr/share/man | wc -l | sed 's/^/man=/'""")
    assert rc == 0, out
    lines = out.split()
    assert f"os=debian-{recipe.tag}" in lines
    assert f"codename={recipe.suite}" in lines
    python = next(line for line in lines if line.startswith("python="))
    assert python.startswith("python=3.")
    assert "apt_lists=0" in lines and "man=0" in lines  # trimmed


# ----------------------------------------------------------------------------- failure paths


def test_names_resolve_with_aliases_and_did_you_mean():
    assert images.resolve("debian-12").name == "portability/debian:12"
    assert images.resolve("debian:13").name == "portability/debian:13"
    assert images.resolve("busybox").name == "portability/busybox:latest"
    with pytest.raises(PortabilityError) as err:
        images.resolve("debain-11")
    message = str(err.value)
    assert "did you mean portability/debian:11?" in message and "\n" not in message


def test_missing_image_hint_only_for_catalog_references():
    assert images.missing_image_hint("portability/debian:12") == \
        "run `portability images build portability/debian:12` to build it locally"
    assert "portability/busybox:latest" in images.missing_image_hint("portability/busybox")
    # Docker Hub's busybox is not ours: no misleading hint.
    assert images.missing_image_hint("busybox") is None
    assert images.missing_image_hint("portability/debian:99") is None


def test_recipe_hash_follows_content_not_name():
    bookworm = images.CATALOG["portability/debian:12"]
    renamed = dataclasses.replace(bookworm, name="other/debian:x")
    more = dataclasses.replace(bookworm, include=("python3", "curl"))
    assert renamed.source_hash() == bookworm.source_hash()
    assert more.source_hash() != bookworm.source_hash()
    assert images.CATALOG["portability/debian:11"].source_hash() != bookworm.source_hash()


def test_unreachable_engine_is_one_line(tmp_path):
    with pytest.raises(PortabilityError) as err:
        images._client(f"unix://{tmp_path}/no-engine.sock")
    assert str(err.value) == (f"Docker Engine at unix://{tmp_path}/no-engine.sock is unreachable "
                              "(no such socket); start dockerd or set DOCKER_HOST")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PORTABILITY_CACHE=str(tmp_path))
    for argv, expected in ((["build", "debain-12"], "did you mean portability/debian:12?"),
                           (["build"], "or pass --all"),
                           (["build", "busybox", "--all"], "not both")):
        proc = subprocess.run([sys.executable, "-m", "portability.images", *argv], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_cli_list_shows_catalog_and_state(docker_client):
    proc = subprocess.run([sys.executable, "-m", "portability.images", "list"],
                          env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()}
    assert set(rows) == set(images.CATALOG)
    for name, state in rows.items():
        assert state == images.status(name, client=docker_client)


# ----------------------------------------------------------------------------- clean-up paths


def test_cancelled_build_stops_its_process_group(tmp_path):
    """A cancel (Ctrl-C in another thread) stops the child group in an orderly way."""
    marker, pidfile = tmp_path / "trapped", tmp_path / "sleep.pid"
    cancel = threading.Event()
    script = f"trap 'echo stopped > {marker}; exit 3' TERM; sleep 60 & echo $! > {pidfile}; wait"
    result: list[BaseException] = []

    def worker():
        images._cancel.event = cancel
        try:
            images._run_logged(["sh", "-c", script], tmp_path / "log", what="test build")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.5)
    cancel.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert isinstance(result[0], PortabilityError) and "cancelled" in str(result[0])
    assert marker.read_text().strip() == "stopped"
    # The backgrounded `sleep` was in the group too: it is gone (once its new parent reaps it).
    sleep_pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(sleep_pid):
        time.sleep(0.05)
    assert not _alive(sleep_pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_scratch_removal_never_deletes_through_a_mount(tmp_path):
    require(os.geteuid() == 0, "needs root to bind-mount")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("host data")
    scratch = tmp_path / "scratch"
    (scratch / "proc").mkdir(parents=True)
    (scratch / "file").write_text("x")
    subprocess.run(["mount", "--bind", str(precious), str(scratch / "proc")], check=True)
    try:
        images._remove_tree(scratch)
    finally:
        subprocess.run(["umount", "-l", str(scratch / "proc")], capture_output=True)
    assert not scratch.exists()
    assert (precious / "keep.txt").read_text() == "host data"


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_debootstrap_leaves_nothing_behind(tmp_path, sig):
    """Ctrl-C or SIGTERM to a real `portability images build` while debootstrap runs: exit 130,
    no scratch dir, no mount, no debootstrap process, no tarball."""
    require(os.geteuid() == 0 and shutil.which("debootstrap") is not None,
            "needs root and debootstrap")
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), PORTABILITY_CACHE=str(tmp_path / "cache"),
               PORTABILITY_BUILD_DIR=str(build_dir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "portability.cli", "images", "build", "debian:12", "--force"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A shell's background job ignores SIGINT; give this one the default handler back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        # Wait until debootstrap has written something into its scratch dir.
        while time.monotonic() < deadline and not any(build_dir.glob("*/*")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert any(build_dir.glob("*/*")), "debootstrap never started"
        time.sleep(1)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert list(build_dir.iterdir()) == []
    assert str(build_dir) not in Path("/proc/self/mountinfo").read_text()
    left = subprocess.run(["pgrep", "-f", f"debootstrap.*{build_dir}"],
                          capture_output=True, text=True).stdout
    assert left == ""
    assert list((tmp_path / "cache" / "images").glob("*.tar")) == []


def test_every_image_of_the_bundled_targets_can_be_built_here():
    """No registry is reachable: each container image targets.yaml names must be in the catalog."""
    import yaml

    declared = yaml.safe_load((REPO / "targets.yaml").read_text())["targets"]
    container_images = [spec["image"] for spec in declared.values()
                        if isinstance(spec, dict) and spec.get("kind") == "container"
                        and spec.get("image")]
    assert container_images
    for image in container_images:
        assert images.missing_image_hint(image) is not None, f"{image} has no local recipe"
