"""Fact matching for skip_on/only_on/kernel/userland markers."""

from __future__ import annotations

import pytest

from portability.facts import Facts
from portability.markers import (
    check_criteria, declared_expectation, describe, facts_match, known_keys, version_matches,
)

DEBIAN12_CONTAINER = {
    **Facts(
        kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
        libc="glibc", libc_version="2.36", python="3.11.2", virtualization="container",
        shares_host_kernel=True, cgroup_version=2,
    ).as_dict(),
    "kind": "container",
    "name": "debian-12",
}
BUSYBOX = {**DEBIAN12_CONTAINER, "os_id": "busybox", "os_version_id": None, "libc": "musl",
           "libc_version": "1.2.4", "python": None, "name": "busybox"}


@pytest.mark.parametrize("value, spec, expected", [
    ("6.1.0-50-amd64", ">=6.6", False),
    ("6.12.3", ">=6.6", True),
    ("6.6", ">=6.6", True),
    ("6.1.0-50-amd64", "<6.1", False),
    ("5.10.0-30-amd64", "<6.1", True),
    ("6.1.0-50-amd64", "<=6.1", True),  # the 6.1 series is "<= 6.1"
    ("6.1.99", ">6.1", False),
    ("6.2", ">6.1", True),
    ("3.11.4", "==3.11", True),
    ("3.12.0", "==3.11", False),
    ("5.10.0", "!=5.10", False),
    ("5.15.0", "!=5.10", True),
    ("3.10.12", ">=3.9,<3.12", True),
    ("3.12.1", ">=3.9,<3.12", False),
    ("3.8.18", ">=3.9,<3.12", False),
    ("6.1.0-50-amd64", "6.1", True),
    ("6.10.2", "6.1", False),  # components are numbers, not text prefixes
    ("6.1", "6.1.0", True),  # a shorter value counts missing parts as 0
    ("3.11.2", "3.11.*", True),
    ("3.11.2", " >= 3.9 , < 3.12 ", True),
    ("2.36", ">=2.34", True),
])
def test_version_matches(value, spec, expected):
    assert version_matches(value, spec) is expected


@pytest.mark.parametrize("spec", [">=3", "<3", "!=3", "3", "==3"])
def test_version_matches_none_or_unversioned_never_matches(spec):
    assert version_matches(None, spec) is False
    assert version_matches("", spec) is False
    assert version_matches("unknown", spec) is False


@pytest.mark.parametrize("spec", ["", "  ", ">=", "=>6.6", ">=six", ">=6.6,", "~6", "6.x"])
def test_version_matches_rejects_malformed_specs(spec):
    with pytest.raises(ValueError, match="version spec"):
        version_matches("6.6", spec)


@pytest.mark.parametrize("criteria, expected", [
    ({}, True),
    ({"kind": "container"}, True),
    ({"kind": "local"}, False),
    ({"kind": ["local", "container"]}, True),
    ({"os_id": "debian"}, True),
    ({"os": "debian"}, True),
    ({"os": "Debian"}, False),  # strings compare case-sensitively
    ({"os": ("alpine", "ubuntu")}, False),
    ({"kernel": ">=6.6"}, False),
    ({"kernel": "<6.6"}, True),
    ({"kernel_release": "6.1"}, True),
    ({"kernel": "6.1.0-50-amd64"}, True),
    ({"python": ">=3.11"}, True),
    ({"python": ">=3.12"}, False),
    ({"python": [">=3.12", "3.11"]}, True),
    ({"python": "3.11"}, True),
    ({"libc": "glibc", "libc_version": "<2.38"}, True),
    ({"libc": "glibc", "libc_version": ">=2.38"}, False),
    ({"os_version_id": ">=12"}, True),
    ({"os_version_id": 12}, True),
    ({"shares_host_kernel": True}, True),
    ({"shares_host_kernel": False}, False),
    ({"cgroup_version": 2}, True),
    ({"cgroup_version": 1}, False),
    ({"name": "debian-12"}, True),
    ({"kind": "container", "python": ">=3.12"}, False),  # every criterion must hold
    ({"kind": "container", "arch": "x86_64", "virtualization": "container"}, True),
])
def test_facts_match_on_a_debian_container(criteria, expected):
    assert facts_match(DEBIAN12_CONTAINER, criteria) is expected


@pytest.mark.parametrize("criteria, expected", [
    ({"python": None}, True),  # None matches a missing fact
    ({"python": ">=3"}, False),  # a range never matches a missing version
    ({"python": "!=3.11"}, False),
    ({"python": [None, ">=3.12"]}, True),
    ({"os_version_id": None}, True),
    ({"libc": "musl", "libc_version": ">=1.2"}, True),
    ({"boot_id": None}, True),
])
def test_facts_match_with_missing_facts(criteria, expected):
    assert facts_match(BUSYBOX, criteria) is expected


def test_a_known_fact_absent_from_the_mapping_counts_as_none():
    assert facts_match({"kind": "local"}, {"python": None, "kind": "local"}) is True
    assert facts_match({"kind": "local"}, {"python": ">=3.9"}) is False


def test_extra_facts_in_the_mapping_can_be_matched():
    assert facts_match({**DEBIAN12_CONTAINER, "rootfs": "host"}, {"rootfs": "host"}) is True


def test_unknown_key_names_the_key_and_the_known_keys():
    with pytest.raises(ValueError) as info:
        facts_match(DEBIAN12_CONTAINER, {"kernal": ">=6.6"})
    message = str(info.value)
    assert message.startswith("unknown fact 'kernal' (did you mean 'kernel'?); known facts: ")
    for key in ("arch", "kernel", "kernel_release", "kind", "os", "os_id", "python"):
        assert key in message.split("known facts: ")[1].split(", ")


def test_float_versions_are_refused_because_they_lose_digits():
    with pytest.raises(ValueError, match=r"python=3\.1 is a number; quote the version"):
        facts_match(DEBIAN12_CONTAINER, {"python": 3.10})


def test_malformed_operator_spec_is_a_value_error():
    with pytest.raises(ValueError, match="bad version spec '>=3.x'"):
        facts_match(DEBIAN12_CONTAINER, {"python": ">=3.x"})


def test_check_criteria_validates_without_facts():
    check_criteria({"kind": "container", "kernel": "<6.1", "python": [">=3.9", None]})
    with pytest.raises(ValueError, match="unknown fact 'distro'"):
        check_criteria({"distro": "debian"})
    with pytest.raises(ValueError, match="bad version spec"):
        check_criteria({"kernel": ">=six"})
    assert {"kernel", "os", "kind", "name", "python"} <= set(known_keys())


@pytest.mark.parametrize("criteria, text", [
    ({"kind": "container", "python": ">=3.11"}, "kind=container, python>=3.11"),
    ({"kernel": "<6.1"}, "kernel<6.1"),
    ({"os": ["alpine", "debian"]}, "(os=alpine or os=debian)"),
    ({"os": ["alpine"]}, "os=alpine"),
    ({"python": None}, "python=none"),
    ({"shares_host_kernel": False}, "shares_host_kernel=false"),
    ({"kernel": "6.1", "cgroup_version": 2}, "kernel=6.1, cgroup_version=2"),
    ({}, ""),
])
def test_describe(criteria, text):
    assert describe(criteria) == text


def test_declared_kernel_expectation():
    criteria, reason = declared_expectation("kernel", (">=6.6",), {"reason": "fchmodat2"})
    assert criteria == {"kernel": ">=6.6"} and reason == "fchmodat2"
    assert facts_match(DEBIAN12_CONTAINER, criteria) is False
    assert declared_expectation("kernel", ("<6.1",), {}) == ({"kernel": "<6.1"}, None)
    for args, kwargs in [((), {}), ((">=6", "<7"), {}), ((6.6,), {}), ((">=6",), {"python": "3"})]:
        with pytest.raises(ValueError, match="takes one version spec"):
            declared_expectation("kernel", args, kwargs)
    with pytest.raises(ValueError, match="bad version spec"):
        declared_expectation("kernel", (">=six",), {})


def test_declared_userland_expectation():
    criteria, reason = declared_expectation("userland", (), {"python": ">=3.11", "libc": "glibc"})
    assert criteria == {"python": ">=3.11", "libc": "glibc"} and reason is None
    assert facts_match(DEBIAN12_CONTAINER, criteria) is True
    assert facts_match(BUSYBOX, criteria) is False
    with pytest.raises(ValueError, match="not a userland fact 'kernel'"):
        declared_expectation("userland", (), {"kernel": ">=6"})
    with pytest.raises(ValueError, match="takes facts as keywords"):
        declared_expectation("userland", (">=3.11",), {})
    with pytest.raises(ValueError, match="not an expectation marker"):
        declared_expectation("skip_on", (), {"kind": "local"})
