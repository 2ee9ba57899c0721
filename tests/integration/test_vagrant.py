"""kind: vagrant on a real provider: vagrant-libvirt + libvirtd, TCG, SSH through a qemu
user-mode NIC forwarded to 127.0.0.1 (.ci/setup.d/60-ssh-vagrant.sh installs it and builds
the test box). One VM at a time: CPU is shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from exec_contract import check_exec_contract
from sshd_server import SshServer
from portability import facts
from portability.errors import TargetUnavailable
from portability.targets.vagrant import (VagrantSpec, VagrantTarget, clean_stale,
                                         sessions_root)

pytestmark = pytest.mark.integration

BOX = "portability/debian12-tcg"
REPO = Path(__file__).resolve().parents[2]


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def vagrant_box():
    require(shutil.which("vagrant") is not None and shutil.which("virsh") is not None,
            "vagrant/libvirt are not installed (.ci/setup.d/60-ssh-vagrant.sh)")
    require(subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                           timeout=60).returncode == 0, "libvirtd is not running")
    boxes = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    require(BOX in boxes.stdout, f"box {BOX} is missing (.ci/setup.d/60-ssh-vagrant.sh builds it)")
    return BOX


def leftovers(session: str) -> list[str]:
    """Domains, volumes and vagrant state of a session still on the machine."""
    found = [f"domain {line.split()[1]}" for line in _virsh("list", "--all").splitlines()[2:]
             if len(line.split()) > 1 and session in line.split()[1]]
    found += [f"volume {line.split()[0]}" for line in
              _virsh("vol-list", "portability").splitlines()[2:]
              if line.split() and session in line.split()[0]]
    found += [f"state {p}" for p in sessions_root().glob(f"{session}--*")]
    status = subprocess.run(["vagrant", "global-status", "--prune"], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"}).stdout
    found += [f"global-status {line}" for line in status.splitlines() if session in line]
    return found


def test_vagrant_vm_runs_commands_with_its_own_kernel_and_is_destroyed(vagrant_box, tmp_path):
    session = "test-vagrant-vm"
    lines: list[str] = []
    target = VagrantTarget(VagrantSpec(name="vm", box=vagrant_box, provider="libvirt",
                                       vagrantfile='config.vm.provision "shell", inline: '
                                                   '"touch /etc/provisioned-by-snippet"'),
                           session=session, base_dir=tmp_path)
    target.progress = lines.append
    try:
        target.start()
        assert any("Machine booted and ready" in line for line in lines), lines
        assert target.ssh.exec_mode == "agent"
        # The only host socket of the VM is the SSH forward on loopback.
        assert f"hostfwd=tcp:127.0.0.1:{target.port}-:22" in _virsh("dumpxml",
                                                                      _domain_of(session))
        found = facts.probe(target)
        assert found.kernel_release != os.uname().release
        assert found.kernel_release.startswith("6.1.")
        assert found.virtualization == "vm" and not found.shares_host_kernel
        assert target.exec(["id", "-un"]).stdout == "vagrant\n"
        assert target.exec(["test", "-e", "/etc/provisioned-by-snippet"]).rc == 0
        check_exec_contract(target, tmp_path)
    finally:
        target.stop()
    assert leftovers(session) == []


def test_plugin_runs_suites_on_local_ssh_container_and_vagrant(vagrant_box, debian_image, tmp_path):
    """The bundled suite over all four remote-ish kinds: the matrix has a column per kind and
    the VM's older kernel shows up in the facts; nothing stays behind."""
    server = SshServer.start()
    try:
        app = REPO / "suites" / "app"
        (tmp_path / "targets.yaml").write_text(
            "targets:\n"
            f"  local: {{kind: local, copy: ['{app}']}}\n"
            f"  debian-12: {{kind: container, image: '{debian_image}', copy: ['{app}']}}\n"
            f"  remote: {{kind: ssh, host: 127.0.0.1, port: {server.port}, user: root,\n"
            f"           identity_file: '{server.client_key}', known_hosts: '{server.known_hosts}',\n"
            f"           copy: ['{app}']}}\n"
            f"  vm: {{kind: vagrant, vagrantfile_dir: '{REPO / 'tests' / 'vagrant'}',\n"
            f"        provider: libvirt, copy: ['{app}']}}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
             f"--targets-file={tmp_path / 'targets.yaml'}", "--targets=all",
             f"--portability-json={tmp_path / 'report.json'}", f"--rootdir={tmp_path}",
             str(REPO / "suites" / "test_system.py"), str(REPO / "suites" / "test_portcheck.py")],
            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    out = proc.stdout
    assert "INTERNALERROR" not in out, out
    assert "test_is_linux[vm] PASSED" in out and "test_is_linux[remote] PASSED" in out, out
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = {name: t["kind"] for name, t in report["targets"].items()}
    assert kinds == {"local": "local", "debian-12": "container", "remote": "ssh", "vm": "vagrant"}
    assert all(t["status"] == "ready" for t in report["targets"].values()), report["targets"]
    vm_facts = report["targets"]["vm"]["facts"]
    assert vm_facts["kernel_release"] != os.uname().release
    assert vm_facts["virtualization"] == "vm"
    assert leftovers(report["session"]) == []
    assert not (REPO / "tests" / "vagrant" / ".vagrant").exists()


def test_failed_up_keeps_the_vm_on_success_policy_and_clean_destroys_it(vagrant_box, tmp_path):
    session = "test-vagrant-broken"
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n'
        f'  config.vm.box = "{vagrant_box}"\n'
        '  config.vm.provision "shell", inline: "echo provisioning-fails; exit 7"\n'
        'end\n')
    target = VagrantTarget(VagrantSpec(name="bad", vagrantfile_dir="project", provider="libvirt",
                                       destroy="on-success"),
                           session=session, base_dir=tmp_path)
    try:
        # The VM boots, then its provisioner fails: the target is unavailable, and with
        # `destroy: on-success` the VM stays for debugging.
        with pytest.raises(TargetUnavailable) as info:
            target.start()
        target.stop()
        target.stop()  # as the pool does for a target that failed to start: the VM stays
        message = str(info.value)
        assert "`vagrant up` failed" in message and "\n" not in message
        assert _domain_of(session)
        assert not (project / ".vagrant").exists()  # machine state lives in the session dir
        # Once the session is over, `portability clean` destroys it.
        removed = clean_stale(lambda s: s != session)
        assert any(f"session {session}" in line for line in removed), removed
    finally:
        target.stop()  # idempotent; closes the SSH side if `up` unexpectedly succeeded
        clean_stale(lambda s: s != session)
    assert leftovers(session) == []


def test_missing_vagrantfile_dir_is_unavailable(tmp_path):
    target = VagrantTarget(VagrantSpec(name="x", vagrantfile_dir=str(tmp_path / "nope")),
                           session="test-vagrant-missing", base_dir=tmp_path)
    with pytest.raises(TargetUnavailable, match="no Vagrantfile"):
        target.start()
    target.stop()
    assert not list(sessions_root().glob("test-vagrant-missing--*"))


def test_clean_stale_destroys_dead_sessions_only(vagrant_box, tmp_path):
    # Two session states with a Vagrant project that was never brought up: `vagrant destroy`
    # runs for the dead one (a no-op for a machine not created), the live one is untouched.
    made = []
    for session in ("test-clean-dead", "test-clean-alive"):
        entry = sessions_root() / f"{session}--t"
        (entry / ".vagrant").mkdir(parents=True)
        (entry / "Vagrantfile").write_text(f'Vagrant.configure("2") {{ |c| c.vm.box = "{BOX}" }}\n')
        (entry / "meta.json").write_text(json.dumps({"session": session, "target": "t",
                                                     "root": str(entry), "owner": "x/1/1",
                                                     "provider": "libvirt"}))
        made.append(entry)
    try:
        removed = clean_stale(lambda session: session == "test-clean-alive")
        assert [line for line in removed if "test-clean-" in line] == [
            f"vagrant machine of target t (session test-clean-dead, {made[0]})"]
        assert not made[0].exists() and made[1].exists()
    finally:
        for entry in made:
            shutil.rmtree(entry, ignore_errors=True)


@pytest.mark.parametrize("body, fragment", [
    ("{kind: vagrant}", "needs either `vagrantfile_dir:`"),
    ("{kind: vagrant, box: b, vagrantfile_dir: d}", "not both"),
    ("{kind: vagrant, vagrantfile_dir: d, vagrantfile: 'x'}", "goes with `box:`"),
    ("{kind: vagrant, box: b, destroy: sometimes}", "must be one of"),
])
def test_spec_errors_are_one_line(tmp_path, body, fragment):
    from portability import config
    from portability.errors import ConfigError

    path = tmp_path / "targets.yaml"
    path.write_text(f"targets:\n  vm: {body}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert fragment in str(info.value) and "targets.yaml:2" in str(info.value)


def _domain_of(session: str) -> str:
    for line in _virsh("list", "--all").splitlines()[2:]:
        parts = line.split()
        if len(parts) > 1 and session in parts[1]:
            return parts[1]
    raise AssertionError(f"no libvirt domain of session {session}")


def test_ports_given_to_parallel_vms_never_collide():
    from concurrent.futures import ThreadPoolExecutor

    from portability.targets.vagrant import allocate_port

    with ThreadPoolExecutor(8) as pool:
        ports = list(pool.map(lambda _: allocate_port(), range(40)))
    assert len(set(ports)) == 40 and all(1024 <= p < 65536 for p in ports)


def test_vm_of_a_killed_session_is_destroyed_by_portability_clean(vagrant_box, tmp_path):
    session = f"test-vagrant-orphan-{os.getpid()}"
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from portability.targets.vagrant import VagrantSpec, VagrantTarget\n"
        f"t = VagrantTarget(VagrantSpec(name='orphan', box='{vagrant_box}', provider='libvirt'),\n"
        f"                  session='{session}', base_dir=Path('{tmp_path}'))\n"
        "t.start()\n"
        "assert t.exec(['true']).rc == 0\n"
        "print('up', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no stop(): the VM is orphaned\n")
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                              text=True, timeout=900,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout == "up\n", proc.stderr
        assert _domain_of(session)
        clean = subprocess.run([sys.executable, "-m", "portability.cli", "clean"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        assert clean.returncode == 0, clean.stderr
        assert f"session {session}" in clean.stdout, clean.stdout + clean.stderr
    finally:
        clean_stale(lambda s: s != session)
    assert leftovers(session) == []


def test_up_timeout_interrupts_vagrant_and_leaves_nothing(vagrant_box, tmp_path):
    session = f"test-vagrant-timeout-{os.getpid()}"
    target = VagrantTarget(VagrantSpec(name="slow", box=vagrant_box, provider="libvirt",
                                       up_timeout=8),
                           session=session, base_dir=tmp_path)
    try:
        with pytest.raises(TargetUnavailable) as info:
            target.start()
        assert "did not finish within 8 s (up_timeout)" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        target.stop()
    assert leftovers(session) == []
