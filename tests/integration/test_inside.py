"""Inside mode end to end: real pytest sessions whose tests run inside local and container targets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SESSION_LABEL = "io.portability.session"
OWNER_LABEL = "io.portability.owner"


def write_project(path: Path, image: str | None, tests: str, *, extra_targets: str = "",
                  ini: str = "") -> None:
    targets = "targets:\n  local: {kind: local}\n"
    if image:
        targets += f"  deb: {{kind: container, image: '{image}'}}\n"
    path.joinpath("targets.yaml").write_text(targets + extra_targets)
    path.joinpath("test_app.py").write_text(tests)
    if ini:
        path.joinpath("pytest.ini").write_text(ini)


def run_pytest(cwd: Path, *args: str, timeout: float = 300, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cells(report: dict) -> dict[tuple[str, str], dict]:
    return {(test["id"], target): cell for test in report["tests"]
            for target, cell in test["outcomes"].items()}


def containers_of(docker_client, *, session: str | None = None, pid: int | None = None) -> list:
    """Containers of one pytest run (other runs may share the engine): by session or owner pid."""
    label = f"{SESSION_LABEL}={session}" if session else SESSION_LABEL
    found = docker_client.api.containers(all=True, filters={"label": label})
    if pid is not None:
        prefix = f"{socket.gethostname()}/{pid}/"
        found = [c for c in found if c["Labels"].get(OWNER_LABEL, "").startswith(prefix)]
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


FIDELITY = '''\
import os, sys
import pytest

pytestmark = pytest.mark.inside

def helper(value):
    assert value == 2, "helper saw " + str(value)

def test_pass():
    pass

def test_fail_with_output():
    print("stdout from inside", sys.executable)
    helper(1)

def test_skip():
    pytest.skip("no frobnicator here")

@pytest.mark.xfail(reason="known bug 42")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed upstream", strict=True)
def test_xpass_strict():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_setup_error(broken):
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n
'''


def test_outcomes_tracebacks_skips_xfails_transported(tmp_path, debian_image, docker_client):
    write_project(tmp_path, debian_image, FIDELITY)
    proc = run_pytest(tmp_path, "--targets=local,deb", "-rA", "-v",
                      "--portability-json=out.json", "--junitxml=junit.xml")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    got = cells(report)
    for target in ("local", "deb"):
        assert got[("test_app.py::test_pass", target)]["outcome"] == "passed"
        assert got[("test_app.py::test_fail_with_output", target)]["outcome"] == "failed"
        assert "helper saw 1" in got[("test_app.py::test_fail_with_output", target)]["message"]
        skip = got[("test_app.py::test_skip", target)]
        assert (skip["outcome"], skip["message"]) == ("skipped", "no frobnicator here")
        xfail = got[("test_app.py::test_xfail", target)]
        assert (xfail["outcome"], xfail["message"]) == ("xfailed", "known bug 42")
        assert got[("test_app.py::test_xpass_strict", target)]["outcome"] == "failed"
        assert got[("test_app.py::test_setup_error", target)]["outcome"] == "error"
        assert got[("test_app.py::test_param[1]", target)]["outcome"] == "passed"
        assert got[("test_app.py::test_param[2]", target)]["outcome"] == "passed"
    # The traceback is the one that happened inside: the container's paths and locals.
    assert ">       assert value == 2" in out
    assert "stdout from inside /usr/bin/python3" in out  # captured output of the container's run
    assert f"stdout from inside {sys.executable}" in out  # ... and of the local run
    assert "RuntimeError: fixture broke" in out
    assert "[XPASS(strict)] fixed upstream" in out
    assert "reproduce inside deb" in out and "docker exec -it" in out
    assert "reproduce inside local" in out
    # Test ids are those of a plain pytest run (plus the target parameter).
    plain = run_pytest(tmp_path, "--collect-only", "-q", "-p", "no:portability")
    plain_ids = {line for line in plain.stdout.splitlines() if "::" in line}
    assert {test["id"] for test in report["tests"]} == plain_ids
    # JUnit carries the same outcomes.
    cases = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    by_name = {case.get("name"): case for case in cases}
    assert by_name["test_fail_with_output[deb]"].find("failure") is not None
    assert by_name["test_skip[deb]"].find("skipped") is not None
    assert by_name["test_setup_error[deb]"].find("error") is not None
    assert not containers_of(docker_client, session=report["session"])


CRASH = '''\
import ctypes, os
import pytest

pytestmark = pytest.mark.inside

def test_before():
    pass

def test_crash():
    if os.environ.get("CRASH") == "1":  # set for the container target only
        ctypes.string_at(0)  # a segfault of the in-target interpreter

def test_after():
    pass
'''


def test_a_crash_errors_the_rest_of_that_target_only(tmp_path, debian_image, docker_client):
    write_project(tmp_path, None, CRASH, extra_targets=(
        f"  deb: {{kind: container, image: '{debian_image}', env: {{CRASH: '1'}}}}\n"))
    proc = run_pytest(tmp_path, "--targets=local,deb", "--portability-json=out.json",
                      "--portability-rerun=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    got = cells(report)
    assert {key: cell["outcome"] for key, cell in got.items()} == {
        ("test_app.py::test_before", "local"): "passed",
        ("test_app.py::test_before", "deb"): "passed",
        ("test_app.py::test_crash", "local"): "passed",
        ("test_app.py::test_crash", "deb"): "error",
        ("test_app.py::test_after", "local"): "passed",
        ("test_app.py::test_after", "deb"): "error",
    }
    assert "crashed while running this test" in got[("test_app.py::test_crash", "deb")]["message"]
    assert "SIGSEGV" in proc.stdout
    assert "not run" in got[("test_app.py::test_after", "deb")]["message"]
    assert not containers_of(docker_client, session=report["session"])


def test_target_without_python_errors_with_one_line_reason(tmp_path, busybox_image, docker_client):
    write_project(tmp_path, None, "import pytest\npytestmark = pytest.mark.inside\n"
                  "def test_one():\n    pass\n",
                  extra_targets=f"  bb: {{kind: container, image: '{busybox_image}'}}\n")
    proc = run_pytest(tmp_path, "--targets=local,bb", "--portability-json=out.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    got = cells(report)
    assert got[("test_app.py::test_one", "local")]["outcome"] == "passed"
    bb = got[("test_app.py::test_one", "bb")]
    assert bb["outcome"] == "error"
    assert "inside mode needs Python in the target" in bb["message"]
    assert "Traceback" not in proc.stdout
    assert not containers_of(docker_client, session=report["session"])


SELECTION = '''\
import pytest

@pytest.mark.inside
def test_marked():
    import os
    assert os.environ.get("PORTABILITY_INSIDE_RESULTS") is None  # popped by the reporter
    assert os.path.basename(os.getcwd()) == "project"

def test_plain():
    pass

def test_drives_target(target):
    assert target.run("true").rc == 0
'''


def test_selection_marker_ini_and_flag(tmp_path):
    """@inside runs inside; ini paths and --inside widen it; `target` tests stay on the controller."""
    write_project(tmp_path, None, SELECTION)
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "test_unit.py").write_text(
        "import os\ndef test_unit():\n    assert os.path.basename(os.getcwd()) == 'project'\n")
    proc = run_pytest(tmp_path, "--collect-only", "-q")
    ids = {line for line in proc.stdout.splitlines() if "::" in line}
    assert ids == {"test_app.py::test_marked[local]", "test_app.py::test_plain",
                   "test_app.py::test_drives_target[local]", "unit/test_unit.py::test_unit"}
    (tmp_path / "pytest.ini").write_text("[pytest]\nportability_inside = unit\n")
    proc = run_pytest(tmp_path, "-v", "--portability-json=out.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unit/test_unit.py::test_unit[local] PASSED" in proc.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    got = cells(report)
    assert set(got) == {("test_app.py::test_marked", "local"),
                        ("test_app.py::test_drives_target", "local"),
                        ("unit/test_unit.py::test_unit", "local")}
    proc = run_pytest(tmp_path, "--inside", "--collect-only", "-q")
    assert "test_app.py::test_plain[local]" in proc.stdout


STREAM = '''\
import os, time
import pytest

pytestmark = pytest.mark.inside

def test_first():
    assert False, "early failure"

def test_blocks():
    release = os.environ["RELEASE_FILE"]
    open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.05)
'''


def test_results_stream_while_the_target_still_runs(tmp_path):
    """The first failure is on the terminal while the in-target run is still busy."""
    write_project(tmp_path, None, STREAM)
    release, pid_file = tmp_path / "release", tmp_path / "pid"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                             "--targets=local"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RELEASE_FILE": str(release),
                                 "PID_FILE": str(pid_file)})
    # If results only came back at the end, the FAILED line would wait for this timer.
    timer = threading.Timer(90, release.write_text, args=("timer",))
    timer.start()
    try:
        for line in proc.stdout:
            if "test_first[local] FAILED" in line:
                break
        assert not release.exists(), "the first result came only after the in-target run ended"
        release.write_text("go")
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 1
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "test_blocks[local] PASSED" in rest


HANG = '''\
import os, time
import pytest

pytestmark = pytest.mark.inside

def test_fails():
    assert False

def test_hangs():
    open(os.environ.get("PID_FILE", "/tmp/pids"), "a").write(str(os.getpid()) + "\\n")
    time.sleep(600)
'''


def test_exitfirst_stops_the_in_target_runs(tmp_path, debian_image, docker_client):
    write_project(tmp_path, debian_image, HANG)
    pid_file = tmp_path / "pids"
    proc = run_pytest(tmp_path, "--targets=local,deb", "-x", "--portability-json=out.json",
                      env={"PID_FILE": str(pid_file)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout and "stopping after 1 failures" in proc.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    got = cells(report)
    assert list(got) == [("test_app.py::test_fails", "local")]
    # --maxfail reached the in-target pytest too: test_hangs never started there.
    assert not pid_file.exists()
    assert not containers_of(docker_client, session=report["session"])


def test_interrupt_leaves_nothing_behind(tmp_path, debian_image, docker_client):
    """Ctrl-C while tests run inside: in-target processes, containers and temp dirs all go."""
    (tmp_path / "proj").mkdir()
    project = tmp_path / "proj"
    workdir = tmp_path / "local-workdir"
    write_project(project, debian_image, HANG.replace("def test_fails():\n    assert False\n", ""),
                  extra_targets="")
    project.joinpath("targets.yaml").write_text(
        "targets:\n"
        f"  local: {{kind: local, workdir: '{workdir}'}}\n"
        f"  deb: {{kind: container, image: '{debian_image}'}}\n")
    pid_file = tmp_path / "pids"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--targets=local,deb"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PID_FILE": str(pid_file), "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert pid_file.exists(), "the in-target test never started"
        # wait until the container's in-target pytest is up as well (a container that is
        # created but not started yet has no processes to list: top() would fail)
        while time.monotonic() < deadline and not any(
                "-p _portability_inside" in " ".join(p)
                for c in containers_of(docker_client, pid=proc.pid) if c["State"] == "running"
                for p in docker_client.api.top(c["Id"])["Processes"]):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    local_pid = int(pid_file.read_text().split()[0])
    for _ in range(50):
        if not pid_alive(local_pid):
            break
        time.sleep(0.1)
    assert not pid_alive(local_pid), out
    assert not (workdir / "portability-inside").exists()
    assert not containers_of(docker_client, pid=proc.pid)
    assert not list(tmp.iterdir())  # the staged project copy is gone too
    assert "KeyboardInterrupt" in out or "Interrupted" in out


def test_failing_install_errors_with_one_line_and_leaves_no_files(tmp_path):
    """A failed `install:` command: the target's inside tests error with a line naming the
    command and targets.yaml; the half-prepared directory is still removed at the end."""
    workdir = tmp_path / "local-workdir"
    project = tmp_path / "proj"
    project.mkdir()
    write_project(project, None, SMALL)
    project.joinpath("targets.yaml").write_text(
        "targets:\n"
        f"  local: {{kind: local, workdir: '{workdir}', install: ['echo no luck >&2; exit 3']}}\n")
    proc = run_pytest(project, "--targets=local", "--portability-json=out.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = cells(json.loads((project / "out.json").read_text()))
    assert {cell["outcome"] for cell in got.values()} == {"error"}
    message = got[("test_app.py::test_pass", "local")]["message"]
    assert "install command `echo no luck >&2; exit 3` exited 3: no luck" in message
    assert "targets.yaml:2: install" in message
    assert "Traceback" not in proc.stdout
    assert workdir.is_dir() and not (workdir / "portability-inside").exists()


def test_bad_inside_args_is_a_usage_error(tmp_path):
    write_project(tmp_path, None, SMALL)
    proc = run_pytest(tmp_path, "--targets=local", "--inside-args=-k 'unclosed")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--inside-args: No closing quotation" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_project_shipping_honours_gitignore(tmp_path):
    from portability.inside import project_files, stage_project

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("build/\n*.log\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "junk.py").write_text("")
    (tmp_path / "run.log").write_text("")
    assert sorted(project_files(tmp_path)) == [".gitignore", "pkg/mod.py"]
    dest = tmp_path / "stage"
    assert stage_project(tmp_path, dest) == 2
    assert (dest / "pkg" / "mod.py").read_text() == "X = 1\n"


def test_pytest_bundle_for_an_older_python(tmp_path):
    """Python 3.9 (Debian 11) cannot run the controller's pytest 9: a pure-Python bundle for 3.9."""
    from portability.inside import pytest_bundle

    bundle, version = pytest_bundle("3.9.2", "t")
    assert (bundle / "pytest" / "__init__.py").exists()
    assert (bundle / "exceptiongroup").is_dir() and (bundle / "tomli").is_dir()
    assert int(version.split(".")[0]) >= 7
    same, same_version = pytest_bundle(".".join(map(str, sys.version_info[:3])), "t")
    assert same_version == pytest.__version__
    assert (same / "pytest" / "__init__.py").exists() and same != bundle


def test_divergent_cells_are_rerun_inside_their_target(tmp_path, debian_image, docker_client):
    """The rerun that tells flaky from real happens in the target (on the controller the
    container's failure would turn into a pass and the row would look flaky)."""
    write_project(tmp_path, None,
                  "import os, pytest\npytestmark = pytest.mark.inside\n"
                  "def test_flavour():\n    assert os.environ.get('FLAVOUR') != 'deb'\n",
                  extra_targets=(f"  deb: {{kind: container, image: '{debian_image}', "
                                 "env: {FLAVOUR: deb}}\n"))
    proc = run_pytest(tmp_path, "--targets=local,deb", "--portability-json=out.json",
                      "--portability-rerun=2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    outcomes = report["tests"][0]["outcomes"]
    assert outcomes["deb"]["outcome"] == "failed"
    assert outcomes["deb"]["reruns"] == ["failed", "failed"]
    assert outcomes["local"]["reruns"] == ["passed", "passed"]
    assert report["tests"][0]["verdict"] == "divergent"
    assert not containers_of(docker_client, session=report["session"])


def test_a_killed_controller_does_not_leave_local_runs_behind(tmp_path):
    """SIGKILL gives the controller no chance to clean up: the local run stops by itself."""
    project = tmp_path / "proj"
    project.mkdir()
    write_project(project, None, HANG.replace("def test_fails():\n    assert False\n", ""))
    pid_file = tmp_path / "pids"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PID_FILE": str(pid_file), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--targets=local"], cwd=project, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), "the in-target test never started"
    finally:
        proc.kill()
        proc.wait()
    test_pid = int(pid_file.read_text().split()[0])
    for _ in range(100):
        if not pid_alive(test_pid):
            break
        time.sleep(0.1)
    assert not pid_alive(test_pid)
    # The killed controller's staged project copy is swept by the next inside run.
    leftover = [p for p in tmp.iterdir() if p.name.startswith("portability-inside-")]
    assert leftover
    (project / "test_app.py").write_text(SMALL.replace("def test_fail", "def _unused"))
    again = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                            "--targets=local"], cwd=project, capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not [p for p in leftover if p.exists()]


SMALL = '''\
import os, sys
import pytest

pytestmark = pytest.mark.inside

def test_pass():
    pass

def test_fail():
    assert os.environ.get("NO_SUCH_VARIABLE") == "set", "fails everywhere"

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
'''


def test_ssh_target_runs_the_tests_inside(tmp_path):
    """Over SSH (a private sshd on 127.0.0.1): the same shipping, streaming and replay."""
    from conftest import require
    from sshd_server import SshServer, sshd_available

    require(sshd_available(), "no sshd (apt-get install openssh-server)")
    server = SshServer.start()
    try:
        write_project(tmp_path, None, SMALL, extra_targets=(
            f"  remote: {{kind: ssh, host: 127.0.0.1, port: {server.port}, user: root,\n"
            f"           identity_file: '{server.client_key}', "
            f"known_hosts: '{server.known_hosts}'}}\n"))
        proc = run_pytest(tmp_path, "--targets=local,remote", "--portability-json=out.json")
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = cells(json.loads((tmp_path / "out.json").read_text()))
    for target in ("local", "remote"):
        assert got[("test_app.py::test_pass", target)]["outcome"] == "passed"
        assert got[("test_app.py::test_fail", target)]["outcome"] == "failed"
        assert "fails everywhere" in got[("test_app.py::test_fail", target)]["message"]
        assert got[("test_app.py::test_xfail", target)]["outcome"] == "xfailed"
    assert "reproduce inside remote" in proc.stdout


def test_kernel_vm_shows_the_kernel_divergence(tmp_path):
    """suites/pkg's memfd MFD_NOEXEC_SEAL test inside a 5.10 VM (the host's userland): fails
    there only, and the verdict says kernel."""
    from conftest import require

    from portability import kernels
    from portability.targets.qemu import qemu_binary

    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    require(kernels.cached("5.10") is not None,
            "kernel 5.10 is not cached (run `portability kernels fetch 5.10`)")
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local}\n  k510: {kind: qemu, kernel: '5.10'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--targets-file",
         str(tmp_path / "targets.yaml"), "--targets=local,k510", "--portability-rerun=0",
         f"--portability-json={tmp_path / 'out.json'}",
         "suites/pkg/tests/test_sysfeat.py::test_sealed_buffer",
         "suites/pkg/tests/test_sysfeat.py::test_python_tag"],
        cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    tests = {t["id"]: t for t in report["tests"]}
    sealed = tests["suites/pkg/tests/test_sysfeat.py::test_sealed_buffer"]
    assert sealed["outcomes"]["local"]["outcome"] == "passed"
    assert sealed["outcomes"]["k510"]["outcome"] == "failed"
    assert "Invalid argument" in sealed["outcomes"]["k510"]["message"]
    assert sealed["verdict"] == "divergent"
    assert sealed["attribution"]["verdict"] == "kernel"
    assert tests["suites/pkg/tests/test_sysfeat.py::test_python_tag"]["verdict"] == "consistent"


def test_container_releases_show_the_userland_divergence(tmp_path, debian_image, docker_client):
    """suites/pkg's tomllib test inside Debian 11 (Python 3.9, pytest shipped for 3.9) and
    Debian 12 (3.11): fails on 11 only, and the verdict says userland."""
    from conftest import require

    from portability import images

    require(images.exists("portability/debian:11", client=docker_client),
            "image portability/debian:11 is missing (run `portability images build "
            "portability/debian:11`)")
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local}\n"
        "  d11: {kind: container, image: 'portability/debian:11'}\n"
        f"  d12: {{kind: container, image: '{debian_image}'}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--targets-file",
         str(tmp_path / "targets.yaml"), "--targets=local,d11,d12",
         f"--portability-json={tmp_path / 'out.json'}", "suites/pkg"],
        cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    tests = {t["id"]: t for t in report["tests"]}
    toml = tests["suites/pkg/tests/test_sysfeat.py::test_load_settings"]
    assert {t: c["outcome"] for t, c in toml["outcomes"].items()} == {
        "local": "passed", "d11": "failed", "d12": "passed"}
    assert "No module named 'tomllib'" in toml["outcomes"]["d11"]["message"]
    assert toml["attribution"]["verdict"] == "userland"
    assert toml["outcomes"]["d11"]["reruns"] == ["failed"]  # re-run inside d11, not here
    others = [t for t in tests.values() if t is not toml]
    assert others and all(t["verdict"] == "consistent" for t in others)
    assert not containers_of(docker_client, session=report["session"])
