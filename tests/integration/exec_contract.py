"""The exec semantics every target kind must honour, as reusable checks.

Each kind's integration tests call ``check_exec_contract(target)`` on a started target, so
local, container, ssh and qemu targets are held to the very same behaviour.
"""

from __future__ import annotations

import time
from pathlib import Path


def check_exit_codes(target) -> None:
    assert target.exec("exit 0").rc == 0
    assert target.exec("exit 3").rc == 3
    assert target.exec(["false"]).rc == 1
    assert target.exec(["/nonexistent/program"]).rc == 127
    assert target.exec("kill -9 $$").rc == 137  # killed by a signal: 128 + 9


def check_output_is_binary_safe_and_separate(target) -> None:
    result = target.exec("printf 'a\\000b\\377'; printf 'err' >&2")
    assert result.stdout_bytes == b"a\x00b\xff"
    assert result.stderr_bytes == b"err"
    big = target.exec("head -c 3000000 /dev/zero")
    assert big.stdout_bytes == b"\x00" * 3_000_000


def check_stdin(target) -> None:
    payload = bytes(range(256)) * 100
    assert target.exec(["cat"], stdin=payload).stdout_bytes == payload
    # No stdin given: the command sees EOF at once instead of hanging.
    assert target.exec(["cat"], timeout=10).stdout_bytes == b""


def check_env_and_cwd(target) -> None:
    result = target.exec("echo $PORTABILITY_X; pwd", env={"PORTABILITY_X": "one two"}, cwd="/tmp")
    assert result.stdout == "one two\n/tmp\n"
    # Nothing leaks into the next command.
    assert target.exec("echo ${PORTABILITY_X:-unset}").stdout == "unset\n"
    assert target.exec(["pwd"]).stdout.strip() == target.workdir
    missing = target.exec(["true"], cwd="/nonexistent-dir")
    assert missing.rc != 0


def check_timeout_kills_the_tree(target) -> None:
    start = time.monotonic()
    result = target.exec("sleep 30 & sleep 31; echo not-reached", timeout=1)
    assert result.timed_out and result.rc == 124
    assert time.monotonic() - start < 20
    assert "not-reached" not in result.stdout
    # The tree is gone and the channel still works.
    ps = target.exec("ps -o args 2>/dev/null || ps")
    assert "sleep 31" not in ps.stdout
    assert target.exec(["echo", "alive"]).stdout == "alive\n"


def check_put_get(target, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(b"\x00\x01" * 1000)
    (src / "top.txt").write_text("top\n")
    remote = f"{target.workdir}/put-test/tree"
    target.put(src, remote)
    assert target.exec(["cat", f"{remote}/top.txt"]).stdout == "top\n"
    back = tmp_path / "back"
    target.get(remote, back)
    assert (back / "sub" / "data.bin").read_bytes() == b"\x00\x01" * 1000
    single = tmp_path / "single.txt"
    target.get(f"{remote}/top.txt", single)
    assert single.read_text() == "top\n"


def check_exec_contract(target, tmp_path: Path) -> None:
    check_exit_codes(target)
    check_output_is_binary_safe_and_separate(target)
    check_stdin(target)
    check_env_and_cwd(target)
    check_timeout_kills_the_tree(target)
    check_put_get(target, tmp_path)
