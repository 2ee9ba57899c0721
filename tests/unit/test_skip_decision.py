import pytest

from portability.markers import skip_decision

HOST = {"kind": "local", "kernel_release": "6.18.44", "python": "3.11.7", "os_id": "debian"}
OLD_VM = {"kind": "qemu", "kernel_release": "5.10.0-32-amd64", "python": "3.11.7", "os_id": "debian"}
BUSYBOX = {"kind": "container", "kernel_release": "6.18.44", "python": None, "os_id": None}


def test_no_markers_never_skip():
    assert skip_decision([], HOST) is None


def test_skip_on_matches_facts():
    markers = [("skip_on", (), {"python": None, "reason": "needs python"})]
    assert skip_decision(markers, HOST) is None
    assert skip_decision(markers, BUSYBOX) == ("skip_on", "skip_on python=none (needs python)")


def test_only_on_skips_where_facts_do_not_match():
    markers = [("only_on", (), {"kind": "container"})]
    assert skip_decision(markers, BUSYBOX) is None
    name, reason = skip_decision(markers, HOST)
    assert name == "only_on" and "kind=container" in reason


def test_kernel_expectation_skips_outside_the_range():
    markers = [("kernel", (">=6.3",), {"reason": "MFD_NOEXEC_SEAL"})]
    assert skip_decision(markers, HOST) is None
    name, reason = skip_decision(markers, OLD_VM)
    assert name == "kernel" and "expected divergence" in reason and "MFD_NOEXEC_SEAL" in reason


def test_userland_expectation():
    markers = [("userland", (), {"python": ">=3.12"})]
    assert skip_decision(markers, HOST)[0] == "userland"


def test_malformed_marker_is_a_value_error():
    with pytest.raises(ValueError):
        skip_decision([("kernel", (">=6.3", "<7"), {})], HOST)
