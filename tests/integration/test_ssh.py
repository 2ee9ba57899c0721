"""kind: ssh against a real OpenSSH server the tests start on 127.0.0.1 (sshd_server.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require
from exec_contract import (check_env_and_cwd, check_exec_contract, check_exit_codes,
                            check_put_get)
from sshd_server import SshServer, sshd_available
from portability import facts
from portability.errors import ConfigError, TargetLost, TargetUnavailable
from portability.targets.ssh import SshSpec, SshTarget

pytestmark = pytest.mark.integration

TEST_USER = "portability-test"


@pytest.fixture(scope="module")
def sshd():
    require(sshd_available(), "no sshd (apt-get install openssh-server)")
    server = SshServer.start()
    yield server
    server.stop()


@pytest.fixture
def own_sshd():
    """A server a test may kill."""
    require(sshd_available(), "no sshd (apt-get install openssh-server)")
    server = SshServer.start()
    yield server
    server.stop()


def ssh_target(server: SshServer, name: str = "s", **kwargs) -> SshTarget:
    options = dict(host="127.0.0.1", port=server.port, user="root",
                   identity_file=str(server.client_key), known_hosts=str(server.known_hosts))
    options.update(kwargs)
    return SshTarget(SshSpec(name=name, **options), session="test-ssh", base_dir=Path.cwd())


def test_exec_contract_through_the_agent(started, sshd, tmp_path):
    assert SshTarget.check_engine(ssh_target(sshd).spec, Path.cwd()) is None
    target = started(ssh_target(sshd))
    assert target.exec_mode == "agent"
    check_exec_contract(target, tmp_path)
    found = facts.probe(target)
    assert found.kernel_release and found.arch


def test_exec_contract_without_the_agent(started, sshd, tmp_path, monkeypatch):
    # No C compiler on the controller: every command is its own exec channel.
    from portability import agent
    from portability.agent import AgentUnavailable

    def no_agent():
        raise AgentUnavailable("no C compiler (test)")

    monkeypatch.setattr(agent, "agent_binary", no_agent)
    target = started(ssh_target(sshd))
    assert target.exec_mode == "exec"
    assert "no C compiler" in target.connection.agent_problem
    check_exec_contract(target, tmp_path)


def test_workdir_is_per_session_and_removed_at_stop(sshd):
    target = ssh_target(sshd, env={"APP_MODE": "ssh"})
    target.start()
    try:
        workdir = target.workdir
        assert "test-ssh" in workdir
        assert target.exec("pwd; echo $APP_MODE").stdout == f"{workdir}\nssh\n"
    finally:
        target.stop()
        target.stop()  # idempotent
    assert not Path(workdir).exists()  # the server is this machine


def test_given_workdir_is_created_and_kept(started, sshd, tmp_path):
    workdir = tmp_path / "given" / "work"
    target = started(ssh_target(sshd, workdir=str(workdir)))
    assert target.exec(["pwd"]).stdout.strip() == str(workdir)
    target.stop()
    assert workdir.is_dir()


def test_copy_entries_are_installed(started, sshd, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "run.sh").write_text("echo from-app\n")
    target = SshTarget(SshSpec(name="s", host="127.0.0.1", port=sshd.port, user="root",
                               identity_file=str(sshd.client_key),
                               known_hosts=str(sshd.known_hosts), copy=("app",)),
                       session="test-ssh", base_dir=tmp_path)
    started(target)
    target.install_copies()
    assert target.exec(["sh", "app/run.sh"]).stdout == "from-app\n"


def test_unknown_host_key_is_refused_with_how_to_accept(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    target = ssh_target(sshd, known_hosts=str(known))
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    message = str(info.value)
    assert "\n" not in message
    assert "is not in" in message and "host_key_policy: accept-new" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in message
    assert known.read_text() == ""


def test_changed_host_key_is_refused(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                   check=True)
    other = (tmp_path / "other.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    target = ssh_target(sshd, known_hosts=str(known))
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    assert "CHANGED" in str(info.value) and "ssh-keygen -R" in str(info.value)
    # accept-new never overrides a changed key.
    target = ssh_target(sshd, known_hosts=str(known), host_key_policy="accept-new")
    with pytest.raises(TargetUnavailable, match="CHANGED"):
        target.start()
    target.stop()


def test_accept_new_records_the_key_then_verify_passes(started, sshd, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    started(ssh_target(sshd, known_hosts=str(known), host_key_policy="accept-new"))
    assert known.read_text().strip() == sshd.host_key_line
    again = started(ssh_target(sshd, name="again", known_hosts=str(known)))
    assert again.exec(["echo", "ok"]).stdout == "ok\n"


def test_insecure_accepts_any_key_without_recording(started, sshd, tmp_path):
    known = tmp_path / "known_hosts"
    target = started(ssh_target(sshd, known_hosts=str(known), host_key_policy="insecure"))
    assert target.exec(["true"]).rc == 0
    assert not known.exists()


def test_proxy_jump_through_an_ssh_config_alias(started, sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host jumpbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n"
        f"Host app-server\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n  ProxyJump jumpbox\n"
        f"Host *\n  UserKnownHostsFile {sshd.known_hosts}\n")
    # Everything, known_hosts included, comes from the config file.
    target = started(SshTarget(SshSpec(name="via-jump", host="app-server", ssh_config=str(config)),
                               session="test-ssh", base_dir=tmp_path))
    assert len(target.connection._clients) == 2  # the jump hop, then the target through it
    assert target.exec(["echo", "through"]).stdout == "through\n"


def test_two_jump_hosts_each_tunnel_to_the_next(started, sshd, own_sshd, tmp_path):
    # app (sshd) through hop1 (sshd) then hop2 (own_sshd): hop1 must tunnel to hop2, not
    # straight to app, or hop2's login would meet app's host key.
    known = tmp_path / "known_hosts"
    known.write_text(sshd.host_key_line + "\n" + own_sshd.host_key_line + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host hop1\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n"
        f"Host hop2\n  HostName 127.0.0.1\n  Port {own_sshd.port}\n  User root\n"
        f"  IdentityFile {own_sshd.client_key}\n"
        f"Host app\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n  ProxyJump hop1,hop2\n"
        f"Host *\n  UserKnownHostsFile {known}\n")
    target = started(SshTarget(SshSpec(name="two-hops", host="app", ssh_config=str(config)),
                               session="test-ssh", base_dir=tmp_path))
    clients = target.connection._clients
    assert len(clients) == 3 and clients[0].get_transport().getpeername()[1] == sshd.port
    assert target.exec(["echo", "through"]).stdout == "through\n"
    workdir = target.workdir
    # Stop while the hops still run (own_sshd is torn down before `started`): the workdir goes.
    target.stop()
    assert not Path(workdir).exists()


def proxied_target(sshd, tmp_path, command: str) -> SshTarget:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host via-proxy\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
        f"  ProxyCommand {command}\n")
    return SshTarget(SshSpec(name="proxied", host="via-proxy", ssh_config=str(config)),
                     session="test-ssh", base_dir=tmp_path)


def test_proxy_command_from_ssh_config(started, sshd, tmp_path):
    require(shutil.which("ssh") is not None, "no ssh client (apt-get install openssh-client)")
    target = started(proxied_target(
        sshd, tmp_path, f"ssh -i {sshd.client_key} -o UserKnownHostsFile={sshd.known_hosts} "
                        f"-o BatchMode=yes -p {sshd.port} -W %h:%p root@127.0.0.1"))
    import paramiko

    assert isinstance(target.connection.client.get_transport().sock, paramiko.ProxyCommand)
    assert target.exec(["echo", "proxied"]).stdout == "proxied\n"


def test_proxy_command_that_cannot_run_is_one_line(started, sshd, tmp_path):
    with pytest.raises(TargetUnavailable) as info:
        started(proxied_target(sshd, tmp_path, "/nonexistent/proxy %h %p"))
    message = str(info.value)
    assert "proxied" in message and "/nonexistent/proxy" in message and "\n" not in message


def test_server_refusing_sessions_is_unavailable_in_one_line(started, tmp_path):
    require(sshd_available(), "no sshd")
    # Logins succeed, but no session channel opens: neither the probe nor the agent can run.
    server = SshServer.start(extra_config="MaxSessions 0")
    try:
        target = ssh_target(server, name="nosessions")
        with pytest.raises(TargetUnavailable) as info:
            started(target)
        message = str(info.value)
        assert "nosessions" in message and "cannot open an SSH channel" in message
        assert "\n" not in message
        assert target.connection.client is None  # the connection was closed, not left open
    finally:
        server.stop()


def test_password_from_environment_never_leaks(started, tmp_path, monkeypatch):
    require(sshd_available(), "no sshd")
    require(subprocess.run(["id", TEST_USER], capture_output=True).returncode == 0,
            f"user {TEST_USER} is missing (.ci/setup.d/60-ssh-vagrant.sh creates it)")
    password = "pw-" + secrets.token_urlsafe(12)
    server = None
    try:
        subprocess.run(["chpasswd"], input=f"{TEST_USER}:{password}", text=True, check=True)
        server = SshServer.start(password_auth=True, users=())
        monkeypatch.setenv("PORTABILITY_TEST_SSH_PASSWORD", password)
        spec = SshSpec(name="pw", host="127.0.0.1", port=server.port, user=TEST_USER,
                       password_env="PORTABILITY_TEST_SSH_PASSWORD",
                       known_hosts=str(server.known_hosts))
        target = started(SshTarget(spec, session="test-ssh", base_dir=tmp_path))
        result = target.exec("id -un; echo $HOME")
        assert result.stdout.split()[0] == TEST_USER
        assert password not in repr(spec) + repr(target.__dict__) + result.stdout + result.stderr
        target.stop()

        monkeypatch.setenv("PORTABILITY_TEST_SSH_PASSWORD", password + "-wrong")
        wrong = SshTarget(spec, session="test-ssh", base_dir=tmp_path)
        with pytest.raises(TargetUnavailable) as info:
            wrong.start()
        wrong.stop()
        assert "authentication as portability-test@127.0.0.1" in str(info.value)
        assert password not in str(info.value)

        monkeypatch.delenv("PORTABILITY_TEST_SSH_PASSWORD")
        unset = SshTarget(spec, session="test-ssh", base_dir=tmp_path)
        with pytest.raises(TargetUnavailable, match="PORTABILITY_TEST_SSH_PASSWORD.*not set"):
            unset.start()
        unset.stop()
        assert password not in server.log()
    finally:
        if server is not None:
            server.stop()
        # "*": no password matches, but key logins still work ("!" would lock those out too).
        subprocess.run(["usermod", "--password", "*", TEST_USER], check=True)


def test_reconnects_after_the_connection_is_killed(own_sshd, started):
    target = started(ssh_target(own_sshd))
    first = target.connection.client
    assert own_sshd.kill_connections() > 0
    deadline = time.monotonic() + 10
    while target.connection.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Dropped between commands: the next command reconnects and runs normally.
    assert target.exec(["echo", "back"]).stdout == "back\n"
    assert target.connection.client is not first
    assert target.connection.mode == "agent"


def test_connection_killed_mid_command_fails_only_that_command(own_sshd, started):
    target = started(ssh_target(own_sshd))
    killer = threading.Timer(1.0, own_sshd.kill_connections)
    killer.start()
    try:
        broken = target.exec(["sleep", "20"], timeout=60)
    finally:
        killer.join()
    assert broken.rc == 255 and "the target reconnected" in broken.stderr
    assert target.exec(["echo", "again"]).stdout == "again\n"


def test_agent_killed_restarts_the_agent(started, sshd):
    target = started(ssh_target(sshd))
    broken = target.exec("kill -9 $PPID")
    assert broken.rc == 255 and "broke" in broken.stderr
    assert target.exec(["echo", "again"]).stdout == "again\n"


def test_server_gone_is_target_lost(started, own_sshd):
    target = started(ssh_target(own_sshd))
    assert target.exec(["true"]).rc == 0
    own_sshd.stop()
    try:
        with pytest.raises(TargetLost) as info:
            target.exec(["true"])
        assert "reconnecting failed" in str(info.value) and "\n" not in str(info.value)
    finally:
        shutil.rmtree(target.workdir, ignore_errors=True)  # the "remote" server is this machine


def test_unreachable_server_is_unavailable(tmp_path):
    from sshd_server import free_port

    spec = SshSpec(name="nobody", host="127.0.0.1", port=free_port(), user="root",
                   connect_timeout=3)
    assert "cannot connect" in SshTarget.check_engine(spec, Path.cwd())
    target = SshTarget(spec, session="t", base_dir=tmp_path)
    with pytest.raises(TargetUnavailable, match="cannot connect to 127.0.0.1"):
        target.start()
    target.stop()


def test_sudo_runs_commands_and_files_as_root(started, sshd, tmp_path):
    require(shutil.which("sudo") is not None, "sudo is not installed")
    target = started(ssh_target(sshd, sudo=True))
    assert target.exec(["id", "-u"]).stdout == "0\n"
    assert target.exec("echo $X", env={"X": "kept"}).stdout == "kept\n"
    src = tmp_path / "f.txt"
    src.write_text("data\n")
    target.put(src, f"{target.workdir}/sub/f.txt")
    assert target.exec(["stat", "-c", "%U", f"{target.workdir}/sub/f.txt"]).stdout == "root\n"
    target.get(f"{target.workdir}/sub", tmp_path / "back")
    assert (tmp_path / "back" / "f.txt").read_text() == "data\n"


@pytest.mark.parametrize("yaml_body, fragment", [
    ("  s: {kind: ssh, port: 22}\n", "needs `host:`"),
    ("  s: {kind: ssh, host: h, password_env: 'hunter2 secret'}\n", "NAME of an environment"),
    ("  s: {kind: ssh, host: h, host_key_policy: yolo}\n", "must be one of"),
])
def test_spec_errors_are_one_line(tmp_path, yaml_body, fragment):
    from portability import config

    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n" + yaml_body)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert fragment in str(info.value) and "targets.yaml:2" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_plugin_end_to_end_local_and_ssh(sshd, tmp_path):
    """A real pytest run over local + the ssh target: matrix, facts, one lost-free run."""
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        f"  remote: {{kind: ssh, host: 127.0.0.1, port: {sshd.port}, user: root,\n"
        f"           identity_file: '{sshd.client_key}', known_hosts: '{sshd.known_hosts}'}}\n")
    (tmp_path / "test_app.py").write_text(
        "def test_echo(target):\n"
        "    assert target.run('echo hi').stdout == 'hi\\n'\n"
        "def test_files(target, tmp_path):\n"
        "    p = tmp_path / 'x.txt'\n"
        "    p.write_text('payload')\n"
        "    target.put(p, target.workdir + '/x.txt')\n"
        "    assert target.run(['cat', 'x.txt']).stdout == 'payload'\n"
        "def test_kind(target):\n"
        "    assert target.kind == 'local'\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--targets=local,remote", "--portability-json=report.json", "-v"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "test_echo[remote] PASSED" in out and "test_files[remote] PASSED" in out
    assert "test_kind[remote] FAILED" in out
    report = json.loads((tmp_path / "report.json").read_text())
    remote = report["targets"]["remote"]
    assert remote["kind"] == "ssh" and remote["status"] == "ready"
    assert remote["facts"]["kernel_release"]
    tests = {t["id"]: t for t in report["tests"]}
    assert tests["test_app.py::test_kind"]["verdict"] == "divergent"
    assert tests["test_app.py::test_echo"]["verdict"] == "consistent"


def test_plugin_lost_ssh_server_errors_only_its_remaining_tests(own_sshd, tmp_path):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        f"  remote: {{kind: ssh, host: 127.0.0.1, port: {own_sshd.port}, user: root,\n"
        f"           identity_file: '{own_sshd.client_key}', known_hosts: '{own_sshd.known_hosts}'}}\n")
    # The first test stops the whole server (listener and sessions) from inside the run.
    (tmp_path / "test_lost.py").write_text(
        "import os, signal\n"
        "def _tree(root):\n"
        "    kids = {}\n"
        "    for e in os.listdir('/proc'):\n"
        "        if e.isdigit():\n"
        "            try:\n"
        "                ppid = int(open(f'/proc/{e}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "            except (OSError, ValueError, IndexError):\n"
        "                continue\n"
        "            kids.setdefault(ppid, []).append(int(e))\n"
        "    out, todo = [root], [root]\n"
        "    while todo:\n"
        "        for k in kids.get(todo.pop(), []):\n"
        "            out.append(k); todo.append(k)\n"
        "    return out\n"
        "def test_1_kill(target):\n"
        "    if target.name == 'remote':\n"
        f"        for pid in _tree({own_sshd.proc.pid}):\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "        target.run('true')\n"
        "def test_2_after(target):\n"
        "    assert target.run('true').rc == 0\n"
        "def test_3_after(target):\n"
        "    assert target.run('true').rc == 0\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--targets=local,remote", "--portability-json=report.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "3 passed" in out, out
    assert "target 'remote' was lost" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["remote"]["status"] == "lost"
    outcomes = {t["id"].split("::")[1]: t["outcomes"]["remote"]["outcome"] for t in report["tests"]}
    assert outcomes == {"test_1_kill": "failed", "test_2_after": "error", "test_3_after": "error"}
    # The run could not remove its workdir on the dead "remote" (this machine): do it here.
    for leftover in Path("/tmp").glob(f"portability-{report['session']}-remote-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def test_endpoint_resolution_spec_keys_win_over_ssh_config(tmp_path):
    import paramiko

    from portability.targets.ssh import resolve_endpoint

    key = tmp_path / "id"
    key.write_text("not read here")
    config = paramiko.SSHConfig.from_text(
        f"Host app\n  HostName 127.0.0.9\n  Port 2200\n  User deploy\n  IdentityFile {key}\n"
        "  ProxyJump bastion1,bastion2\n")
    found = resolve_endpoint("app", config, user=None, port=None)
    assert (found.hostname, found.port, found.user) == ("127.0.0.9", 2200, "deploy")
    assert found.key_files == [str(key)] and found.proxy_jump == ["bastion1", "bastion2"]
    assert found.known_hosts_name == "[127.0.0.9]:2200"
    explicit = resolve_endpoint("ops@app:2300", config, user=None, port=None)
    assert (explicit.user, explicit.port) == ("ops", 2300)
    assert resolve_endpoint("app", config, user="me", port=22).label == "me@127.0.0.9:22"
    plain = resolve_endpoint("127.0.0.1", None, user="root", port=None)
    assert (plain.port, plain.proxy_jump, plain.known_hosts_name) == (22, [], "127.0.0.1")


@pytest.fixture
def noisy_sshd():
    """A server whose shell prints a banner before every command, which also breaks its
    SFTP (as a chatty ~/.bashrc does)."""
    require(sshd_available(), "no sshd")
    server = SshServer.start()
    banner = server.dir / "banner.sh"
    banner.write_text('echo "Welcome to the test server"\necho "stderr noise" >&2\n'
                      'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
    keys = server.dir / "authorized_keys" / "root"
    keys.write_text(f'command="/bin/sh {banner}" ' + keys.read_text())
    yield server
    server.stop()


def test_noisy_login_shell_without_sftp_still_gets_clean_output(noisy_sshd, started, tmp_path):
    # The agent is uploaded through `cat`, its stream skips the banner, the exec path cuts
    # it off, and files go through tar.
    target = started(ssh_target(noisy_sshd))
    assert target.exec_mode == "agent"
    result = target.exec(["echo", "clean"])
    assert (result.stdout, result.stderr) == ("clean\n", "")
    raw = target.connection.run_exec("echo raw", raw=True)
    assert (raw.stdout, raw.stderr) == ("raw\n", "")
    check_put_get(target, tmp_path)


def test_noisy_login_shell_exec_fallback_keeps_the_contract(noisy_sshd, started, tmp_path,
                                                            monkeypatch):
    from portability import agent
    from portability.agent import AgentUnavailable

    def no_agent():
        raise AgentUnavailable("no C compiler (test)")

    monkeypatch.setattr(agent, "agent_binary", no_agent)
    target = started(ssh_target(noisy_sshd))
    assert target.exec_mode == "exec"
    check_exec_contract(target, tmp_path)


def test_noexec_home_falls_back_to_a_channel_per_command(started, tmp_path):
    """The agent cannot run from a noexec ~/.cache: commands still work, one channel each."""
    require(sshd_available(), "no sshd")
    require(subprocess.run(["id", TEST_USER], capture_output=True).returncode == 0,
            f"user {TEST_USER} is missing (.ci/setup.d/60-ssh-vagrant.sh creates it)")
    import pwd

    user = pwd.getpwnam(TEST_USER)
    # "*": no password, key logins allowed (sshd refuses keys for "!"-locked accounts).
    subprocess.run(["usermod", "--password", "*", TEST_USER], check=True)
    cache = Path(user.pw_dir) / ".cache"
    cache.mkdir(exist_ok=True)
    os.chown(cache, user.pw_uid, user.pw_gid)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o",
                              f"noexec,size=16m,mode=0755,uid={user.pw_uid},gid={user.pw_gid}",
                              "tmpfs", str(cache)], capture_output=True, text=True)
    require(mounted.returncode == 0, f"cannot mount a noexec tmpfs here ({mounted.stderr.strip()})")
    server = None
    try:
        server = SshServer.start(users=(TEST_USER,))
        target = started(ssh_target(server, user=TEST_USER))
        assert target.exec_mode == "exec"
        assert "did not start" in target.connection.agent_problem
        check_exit_codes(target)
        check_env_and_cwd(target)
        assert target.exec(["id", "-un"]).stdout == f"{TEST_USER}\n"
        target.stop()
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", str(cache)], check=True)
