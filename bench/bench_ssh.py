#!/usr/bin/env python3
"""Per-command latency of the ssh target against testinfra's SSH backends, in one run.

Everything talks to the same private sshd on 127.0.0.1 (tests/integration/sshd_server.py)
as root, whose ~/.bashrc is whatever this machine has (here it runs `pyenv init`, as many
real servers run something): every backend that starts a login shell per command pays it.

Rows, each `true` as a fresh process:
  * portability ssh target (the agent over one exec channel)
  * portability ssh target without the agent (one exec channel per command)
  * testinfra paramiko backend (anchor for the ratio goal)
  * testinfra ssh backend (one `ssh` process per command), without and with ControlMaster

Usage: python3 bench/bench_ssh.py [-n 300]
Goals (issue 3): portability <= 3 ms median, >= 15x faster than testinfra's paramiko backend.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import testinfra  # noqa: E402

from portability import agent  # noqa: E402
from portability.targets.ssh import SshSpec, SshTarget  # noqa: E402
from sshd_server import SshServer  # noqa: E402


def median_ms(fn, n: int) -> float:
    fn()  # warm-up (connects lazily where a backend does)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="commands per fast measurement")
    args = parser.parse_args()
    n, slow_n = args.n, max(15, args.n // 10)
    # testinfra's paramiko backend warns about every unknown host key; it is ours, on loopback.
    warnings.filterwarnings("ignore", message="Unknown .* host key")

    server = SshServer.start()
    tmp = Path(tempfile.mkdtemp(prefix="portability-bench-ssh-"))
    control = tmp / "cm-%C"
    config = tmp / "ssh_config"
    config.write_text(
        f"Host bench\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n"
        f"  IdentityFile {server.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {server.known_hosts}\n  StrictHostKeyChecking yes\n")
    spec = SshSpec(name="bench", host="127.0.0.1", port=server.port, user="root",
                   identity_file=str(server.client_key), known_hosts=str(server.known_hosts))
    ours = SshTarget(spec, session="bench", base_dir=ROOT)
    fallback = SshTarget(spec, session="bench", base_dir=ROOT)
    rows: dict[str, float] = {}
    try:
        ours.start()
        assert ours.exec_mode == "agent", ours.connection.agent_problem
        real_binary = agent.agent_binary
        agent.agent_binary = lambda: (_ for _ in ()).throw(agent.AgentUnavailable("bench"))
        try:
            fallback.start()
        finally:
            agent.agent_binary = real_binary
        assert fallback.exec_mode == "exec"
        ti_paramiko = testinfra.get_host("paramiko://bench", ssh_config=str(config))
        ti_ssh = testinfra.get_host("ssh://bench?controlpersist=0", ssh_config=str(config))
        ti_ssh_cm = testinfra.get_host("ssh://bench?controlpersist=60", ssh_config=str(config),
                                       ssh_extra_args=f"-o ControlPath={control}")
        rows["portability ssh (agent)"] = median_ms(lambda: ours.exec(["true"]), n)
        rows["portability ssh (no agent: exec channel per command)"] = median_ms(
            lambda: fallback.exec(["true"]), slow_n)
        rows["testinfra paramiko backend (anchor)"] = median_ms(
            lambda: ti_paramiko.run("true"), slow_n)
        rows["testinfra ssh backend"] = median_ms(lambda: ti_ssh.run("true"), slow_n)
        rows["testinfra ssh backend + ControlMaster"] = median_ms(
            lambda: ti_ssh_cm.run("true"), slow_n)
        assert list(tmp.glob("cm-*")), "the ControlMaster socket was not created"
    finally:
        try:
            subprocess.run(["ssh", "-F", str(config), "-o", f"ControlPath={control}", "-O",
                            "exit", "bench"], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            pass  # the master goes away with the server below
        ours.stop()
        fallback.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(map(len, rows))
    print(f"per-command median, `true`, n={n} (slow backends n={slow_n}), sshd on 127.0.0.1")
    for label, value in rows.items():
        print(f"  {label:<{width}}  {value:9.3f} ms")
    ours_ms = rows["portability ssh (agent)"]
    anchor = rows["testinfra paramiko backend (anchor)"]
    print(f"ratios: testinfra paramiko / portability = {anchor / ours_ms:.1f}x (goal >= 15x); "
          f"testinfra ssh+ControlMaster / portability = "
          f"{rows['testinfra ssh backend + ControlMaster'] / ours_ms:.1f}x; "
          f"portability = {ours_ms:.2f} ms (goal <= 3 ms)")
    ok = ours_ms <= 3.0 and anchor / ours_ms >= 15
    print("goals met" if ok else "goals NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
