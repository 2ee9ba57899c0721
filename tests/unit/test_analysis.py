"""The divergence analysis over synthetic matrices (pure functions, no engines)."""

from __future__ import annotations

import pytest

from portability.analysis import (
    Cell,
    TargetInfo,
    attribute,
    build_rows,
    differing_observations,
    gate,
    kernel_boundary,
    verdict,
)

HOST = dict(kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
            libc="glibc", libc_version="2.36", python="3.11.2", virtualization="none",
            shares_host_kernel=True)
DEB11 = dict(HOST, os_version_id="11", libc_version="2.31", python="3.9.2",
             virtualization="container")


def target(name, kind="container", status="ready", **facts):
    base = dict(HOST, virtualization={"local": "none", "container": "container"}.get(kind, "vm"),
                shares_host_kernel=kind in ("local", "container"))
    base.update(facts)
    return TargetInfo(name=name, kind=kind, status=status, facts=base,
                      error=None if status == "ready" else "engine unreachable")


def targets(*infos):
    return {t.name: t for t in infos}


def row(outcomes, test="tests/test_app.py::test_x", **cell_kwargs):
    cells = []
    for name, outcome in outcomes.items():
        extra = cell_kwargs.get(name, {})
        cells.append(Cell(test_id=test, target=name, outcome=outcome, **extra))
    (only,) = build_rows(cells)
    return only


LOCAL = target("local", "local")
DEB12 = target("debian-12")
DEB11_C = target("debian-11", os_version_id="11", libc_version="2.31", python="3.9.2")
VM_612 = target("vm-6.12", "qemu", kernel_release="6.12.9")  # host rootfs, newer kernel
VM_510_DEB11 = target("vm-5.10", "qemu", kernel_release="5.10.0-30-amd64", os_version_id="11",
                      libc_version="2.31", python="3.9.2")


# -- rows and verdicts ---------------------------------------------------------------------

def test_build_rows_groups_cells_by_test_in_first_seen_order():
    cells = [Cell("b", "local", "passed"), Cell("a", "local", "failed"),
             Cell("b", "debian-12", "passed"), Cell("a", "debian-12", "passed")]
    rows = build_rows(cells)
    assert [r.test_id for r in rows] == ["b", "a"]
    assert rows[1].targets == ["local", "debian-12"]
    assert rows[1].cells["local"].outcome == "failed"


@pytest.mark.parametrize("outcomes, expected", [
    ({"local": "passed", "debian-12": "passed"}, "consistent"),
    ({"local": "failed", "debian-12": "failed"}, "consistent"),  # all-fail is not a divergence
    ({"local": "skipped", "debian-12": "skipped"}, "consistent"),  # all-skip
    ({"local": "passed", "debian-12": "failed"}, "divergent"),
    ({"local": "passed", "debian-12": "skipped"}, "divergent"),  # a skip nobody declared
    ({"local": "xfailed", "debian-12": "xpassed"}, "divergent"),
    ({"local": "passed"}, "consistent"),  # a single target cannot diverge
])
def test_verdict_compares_outcomes(outcomes, expected):
    assert verdict(row(outcomes), targets(LOCAL, DEB12)) == expected


def test_skips_a_marker_asked_for_do_not_count():
    r = row({"local": "passed", "debian-12": "skipped", "debian-11": "passed"},
            **{"debian-12": {"expected": True}})
    assert verdict(r, targets(LOCAL, DEB12, DEB11_C)) == "consistent"
    assert attribute(r, targets(LOCAL, DEB12, DEB11_C)) is None


def test_errors_of_an_unavailable_or_lost_target_are_not_divergences_of_the_app():
    down = target("debian-13", status="unavailable")
    lost = target("vm", "qemu", status="lost")
    infos = targets(LOCAL, DEB12, down, lost)
    r = row({"local": "passed", "debian-12": "passed", "debian-13": "error", "vm": "error"})
    assert verdict(r, infos) == "consistent"
    # The same error on a ready target is the application's.
    assert verdict(r, targets(LOCAL, DEB12, target("debian-13"), target("vm", "qemu"))) == "divergent"
    # A real failure elsewhere is still attributed, without the unavailable targets.
    r2 = row({"local": "passed", "debian-12": "passed", "debian-11": "failed", "debian-13": "error"})
    a = attribute(r2, targets(LOCAL, DEB12, DEB11_C, down))
    assert a.verdict == "userland"
    assert "debian-13" not in a.passing + a.failing


# -- attribution -----------------------------------------------------------------------------

def test_kernel_split_with_a_minimal_pair_and_its_boundary():
    # host vs a VM booting the host's rootfs with another kernel: the controlled experiment.
    infos = targets(LOCAL, DEB12, DEB11_C, VM_612)
    r = row({"local": "failed", "debian-12": "failed", "debian-11": "failed", "vm-6.12": "passed"})
    a = attribute(r, infos)
    assert a.verdict == "kernel"
    assert a.passing == ("vm-6.12",)
    assert set(a.failing) == {"local", "debian-12", "debian-11"}
    assert ("vm-6.12", "local") in a.minimal_pairs
    assert a.kernel_boundary == "fails on kernel ≤ 6.1, passes on ≥ 6.12"
    assert a.facts["kernel_release"]["vm-6.12"] == "6.12.9"
    assert "fails on kernel ≤ 6.1, passes on ≥ 6.12" in a.explanation


def test_userland_split_on_a_shared_kernel():
    infos = targets(LOCAL, DEB12, DEB11_C)
    r = row({"local": "passed", "debian-12": "passed", "debian-11": "failed"})
    a = attribute(r, infos)
    assert a.verdict == "userland"
    assert a.candidates == ("userland",)
    assert a.minimal_pairs == (("debian-12", "debian-11"),)
    assert a.facts["python"] == {"local": "3.11.2", "debian-12": "3.11.2", "debian-11": "3.9.2"}
    assert a.kernel_boundary is None


def test_kind_split_only_containers_fail():
    infos = targets(LOCAL, DEB12, DEB11_C)
    a = attribute(row({"local": "passed", "debian-12": "failed", "debian-11": "failed"}), infos)
    assert a.verdict == "kind"
    assert a.passing == ("local",)
    assert ("local", "debian-12") in a.minimal_pairs


def test_arch_split():
    arm = target("debian-12-arm64", arch="aarch64")
    a = attribute(row({"debian-12": "passed", "debian-11": "passed", "debian-12-arm64": "failed"}),
                  targets(DEB12, DEB11_C, arm))
    assert a.verdict == "arch"
    assert a.failing == ("debian-12-arm64",)


def test_confounded_kernel_and_userland_is_ambiguous_and_names_the_target_to_add():
    infos = targets(LOCAL, VM_510_DEB11)
    a = attribute(row({"local": "passed", "vm-5.10": "failed"}), infos)
    assert a.verdict == "ambiguous"
    assert set(a.candidates) == {"kernel", "userland"}
    assert a.suggestion == "add a qemu target with kernel 5.10 and rootfs host"
    assert a.kernel_boundary == "fails on kernel ≤ 5.10, passes on ≥ 6.1"
    assert a.suggestion in a.explanation


def test_confounded_userland_and_kind_suggests_a_container_with_the_host_userland():
    a = attribute(row({"local": "passed", "debian-11": "failed"}), targets(LOCAL, DEB11_C))
    assert a.verdict == "ambiguous"
    assert set(a.candidates) == {"userland", "kind"}
    assert "container target with the userland of local" in a.suggestion
    # Adding exactly that target resolves it.
    b = attribute(row({"local": "passed", "debian-11": "failed", "debian-12": "passed"}),
                  targets(LOCAL, DEB11_C, DEB12))
    assert b.verdict == "userland"


def test_single_target_failure_with_identical_facts_is_unexplained():
    twin = target("debian-12-b")
    a = attribute(row({"debian-12": "passed", "debian-12-b": "failed"}), targets(DEB12, twin))
    assert a.verdict == "unexplained"
    assert "identical" in a.explanation
    assert a.candidates == ()


def test_a_split_no_single_group_explains():
    # local and the VM pass; debian-12 (container, host userland) and a debian-11 VM fail:
    # kind and userland each explain half, neither all.
    vm11 = target("vm-deb11", "qemu", os_version_id="11", libc_version="2.31", python="3.9.2")
    a = attribute(row({"local": "passed", "vm-6.12": "passed", "debian-12": "failed",
                       "vm-deb11": "failed"}), targets(LOCAL, VM_612, DEB12, vm11))
    assert a.verdict == "unexplained"
    assert "not along the split" in a.explanation


def test_flaky_reruns_win_over_facts():
    infos = targets(LOCAL, DEB12, DEB11_C)
    r = row({"local": "passed", "debian-12": "passed", "debian-11": "failed"},
            **{"debian-11": {"reruns": ("passed",)}})
    a = attribute(r, infos)
    assert a.verdict == "flaky"
    assert a.flaky_targets == ("debian-11",)
    assert "failed → passed" in a.explanation


def test_a_flaky_cell_makes_an_otherwise_uniform_row_divergent():
    r = row({"local": "passed", "debian-12": "passed"}, **{"debian-12": {"reruns": ("failed", "passed")}})
    assert verdict(r, targets(LOCAL, DEB12)) == "divergent"
    assert attribute(r, targets(LOCAL, DEB12)).verdict == "flaky"
    # Re-runs that agree are not flaky.
    stable = row({"local": "passed", "debian-12": "failed"}, **{"debian-12": {"reruns": ("failed",)}})
    assert attribute(stable, targets(LOCAL, DEB12)).verdict == "kind"


def test_all_fail_and_all_skip_have_no_attribution():
    infos = targets(LOCAL, DEB12, DEB11_C)
    assert attribute(row({"local": "failed", "debian-12": "failed", "debian-11": "failed"}), infos) is None
    assert attribute(row({"local": "skipped", "debian-12": "skipped", "debian-11": "skipped"}), infos) is None


def test_skip_versus_pass_is_split_by_the_best_outcome():
    a = attribute(row({"local": "passed", "debian-12": "passed", "debian-11": "skipped"}),
                  targets(LOCAL, DEB12, DEB11_C))
    assert a.passing == ("local", "debian-12")
    assert a.failing == ("debian-11",)
    assert a.verdict == "userland"
    assert "skipped only on debian-11" in a.explanation


# -- kernel boundary -------------------------------------------------------------------------

def _kernels(**releases):
    return {n: target(n, "qemu", kernel_release=k) for n, k in releases.items()}


def test_kernel_boundary_both_directions_and_non_monotone():
    infos = _kernels(a="5.10.0-30-amd64", b="5.15.0", c="6.1.0-50-amd64", d="6.12.1")
    assert kernel_boundary(["c", "d"], ["a", "b"], infos) == "fails on kernel ≤ 5.15, passes on ≥ 6.1"
    assert kernel_boundary(["a", "b"], ["c", "d"], infos) == "passes on kernel ≤ 5.15, fails on ≥ 6.1"
    assert kernel_boundary(["a", "d"], ["b", "c"], infos) is None


def test_kernel_boundary_keeps_the_digits_that_tell_versions_apart():
    infos = _kernels(old="6.1.0-13-amd64", new="6.1.5")
    assert kernel_boundary(["new"], ["old"], infos) == "fails on kernel ≤ 6.1.0, passes on ≥ 6.1.5"


def test_kernel_boundary_unparsable_release():
    infos = _kernels(x="weird", y="6.1.0")
    assert kernel_boundary(["y"], ["x"], infos) is None


# -- observations ----------------------------------------------------------------------------

def test_differing_observations_lists_only_values_that_differ():
    obs = {
        "t::version": {"version": {"local": "1.2", "debian-11": "1.1"},
                       "checksum": {"local": "abc", "debian-11": "abc"}},
        "t::listing": {"order": {"local": ["a", "b"], "debian-11": ["b", "a"]},
                       "count": {"local": 2}},
        "t::dict": {"env": {"local": {"a": 1, "b": 2}, "debian-11": {"b": 2, "a": 1}}},
    }
    found = differing_observations(obs)
    assert found == [
        {"test": "t::version", "name": "version", "values": {"local": "1.2", "debian-11": "1.1"}},
        {"test": "t::listing", "name": "order", "values": {"local": ["a", "b"], "debian-11": ["b", "a"]}},
    ]
    assert differing_observations(None) == []


# -- gate ------------------------------------------------------------------------------------

def _report(tests, ready=("local", "debian-12")):
    return {"targets": {n: {"status": "ready"} for n in ready},
            "tests": [{"id": tid, "verdict": v,
                       "outcomes": {t: {"outcome": o} for t, o in outcomes.items()}}
                      for tid, v, outcomes in tests]}


def test_gate_without_baseline_fails_on_any_divergence():
    clean = _report([("a", "consistent", {"local": "passed", "debian-12": "passed"})])
    assert gate(clean).ok
    dirty = _report([("a", "consistent", {"local": "passed", "debian-12": "passed"}),
                     ("b", "divergent", {"local": "passed", "debian-12": "failed"})])
    dirty["tests"][1]["attribution"] = {"verdict": "kind"}
    result = gate(dirty)
    assert "  b (kind)" in result.lines()
    assert not result.ok
    assert result.divergent == ("b",)
    assert any("undeclared divergence" in line for line in result.lines())
    assert result.lines()[-1] == "portability gate: FAILED"


def test_gate_with_baseline_new_divergence_regression_fixed_known():
    baseline = _report([
        ("known", "divergent", {"local": "passed", "debian-12": "failed"}),
        ("fixed", "divergent", {"local": "passed", "debian-12": "failed"}),
        ("regress", "consistent", {"local": "passed", "debian-12": "passed"}),
        ("new", "consistent", {"local": "passed", "debian-12": "passed"}),
    ])
    now = _report([
        ("known", "divergent", {"local": "passed", "debian-12": "failed"}),
        ("fixed", "consistent", {"local": "passed", "debian-12": "passed"}),
        ("regress", "consistent", {"local": "failed", "debian-12": "failed"}),
        ("new", "divergent", {"local": "passed", "debian-12": "skipped"}),
    ])
    result = gate(now, baseline)
    assert not result.ok
    assert result.new_divergences == ("new",)
    assert result.known_divergences == ("known",)
    assert result.fixed == ("fixed",)
    assert result.regressions == (("regress", "local", "failed"), ("regress", "debian-12", "failed"))
    text = "\n".join(result.lines())
    assert "regress on local: failed" in text and "fixed since the baseline" in text


def test_gate_with_baseline_passes_on_known_divergences_only():
    baseline = _report([("known", "divergent", {"local": "passed", "debian-12": "failed"})])
    assert gate(_report([("known", "divergent", {"local": "passed", "debian-12": "failed"})]),
                baseline).ok


def test_gate_ignores_errors_of_unavailable_targets_and_declared_skips():
    baseline = _report([("a", "consistent", {"local": "passed", "debian-12": "passed"})])
    now = _report([("a", "consistent", {"local": "passed", "debian-12": "error"})], ready=("local",))
    assert gate(now, baseline).regressions == ()
    declared = _report([("a", "consistent", {"local": "passed", "debian-12": "failed"})])
    declared["tests"][0]["outcomes"]["debian-12"]["expected"] = True
    assert gate(declared, baseline).ok


def test_confounded_kernel_and_kind_suggests_a_full_system_on_the_container_kernel():
    a = attribute(row({"debian-11": "passed", "vm-6.12": "failed"}), targets(DEB11_C, VM_612))
    assert a.verdict == "ambiguous"
    assert set(a.candidates) == {"kernel", "kind", "userland"}
    b = attribute(row({"debian-12": "passed", "vm-6.12": "failed"}), targets(DEB12, VM_612))
    assert set(b.candidates) == {"kernel", "kind"}
    # Without the host among the targets its userland is unknown: name the container's.
    assert b.suggestion == ("add a qemu target with kernel 6.1 and the debian 12, glibc 2.36, "
                            "python 3.11.2 rootfs of debian-12")
    # With the host in the target list the suggestion is the host itself.
    c = attribute(row({"debian-12": "passed", "vm-6.12": "failed"}),
                  targets(DEB12, VM_612, target("local", "local", status="unavailable")))
    assert c.suggestion == "add the local target (kernel 6.1, the host itself)"
