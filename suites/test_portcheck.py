"""portcheck's behaviour, checked on every target it should run on."""

import hashlib

import pytest

# portcheck is a Python program: targets without Python cannot run it (an expected skip).
pytestmark = pytest.mark.skip_on(python=None)


def portcheck(target, *args, **kwargs):
    return target.run(["python3", target.path("app", "portcheck.py"), *args], **kwargs)


def test_version(target):
    assert portcheck(target, "version").stdout == "portcheck 1.4.0\n"


def test_checksum_matches_host(target, tmp_path):
    data = bytes(range(256)) * 64
    (tmp_path / "blob.bin").write_bytes(data)
    target.put(tmp_path / "blob.bin", target.path("blob.bin"))
    result = portcheck(target, "checksum", target.path("blob.bin"))
    assert result.rc == 0
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_wordcount_from_stdin(target):
    result = portcheck(target, "wordcount", stdin=b"one two  three\nfour\n")
    assert result.stdout.strip() == "4"


def test_list_is_sorted(target):
    target.run("mkdir -p listing && cd listing && touch b a C 10 9")
    assert portcheck(target, "list", "listing").stdout.split() == ["10", "9", "C", "a", "b"]


def test_unknown_command_is_usage_error(target):
    result = portcheck(target, "frobnicate")
    assert result.rc == 2
    assert "usage: portcheck" in result.stderr


def test_stash_is_sealed_against_exec(target):
    """Kernel-dependent: memfd_create accepts MFD_NOEXEC_SEAL since Linux 6.3."""
    result = portcheck(target, "stash", stdin=b"payload")
    assert result.rc == 0, result.stderr
    assert result.stdout == "stashed 7 bytes; exec sealed: yes\n"


def test_reads_toml_config(target):
    """Userland-dependent: tomllib is in the standard library since Python 3.11."""
    target.run("printf 'name = \"demo\"\\nport = 8080\\n' > app.toml")
    result = portcheck(target, "config", "app.toml")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == '{"name": "demo", "port": 8080}'
