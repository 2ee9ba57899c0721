"""targets.yaml loading, validation messages and the --targets selection grammar."""

from __future__ import annotations

import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import pytest

from portability import config as config_mod
from portability.config import Config, default_config, find_targets_file, load
from portability.errors import ConfigError
from portability.targets import KIND_MODULES
from portability.targets.base import Spec
from portability.targets.container import ContainerSpec
from portability.targets.local import LocalSpec


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory as cwd, so messages read `targets.yaml:LINE`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites" / "app").mkdir(parents=True)
    return tmp_path


def write(project: Path, text: str, name: str = "targets.yaml") -> Path:
    path = project / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_text(project: Path, text: str) -> Config:
    return load(write(project, text))


def error_of(project: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(project, text)
    message = str(info.value)
    assert "\n" not in message, message
    return message


EXAMPLE = """
targets:
  local: {kind: local}
  debian-12: {kind: container, image: "portability/debian:12", copy: [suites/app]}
  debian-11: {kind: container, image: "portability/debian:11"}
groups:
  containers: [debian-11, debian-12]
"""


# -- a fake kind exercising every supported option type --------------------------------------

@dataclass(frozen=True, kw_only=True)
class FakeSpec(Spec):
    kind: str = "fake"
    memory: int  # required: no default
    ratio: float = 1.0
    enabled: bool = False
    label: str | None = None
    mode: Literal["host", "image"] = "host"
    disks: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    limits: Mapping[str, int] = field(default_factory=dict)
    where: Path | None = None

    def validate(self) -> str | None:
        if self.memory <= 0:
            return "`memory:` must be positive (MiB)"
        return None


@pytest.fixture
def fake_kind(monkeypatch):
    module = types.ModuleType("portability_test_fake_kind")
    module.TARGET = type("FakeTarget", (), {"kind": "fake", "Spec": FakeSpec})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(KIND_MODULES, "fake", module.__name__)
    return FakeSpec


# -- loading the example --------------------------------------------------------------------

def test_example_file_builds_kind_specs_in_declaration_order(project):
    config = load_text(project, EXAMPLE)
    assert list(config.targets) == ["local", "debian-12", "debian-11"]
    assert config.targets["local"] == LocalSpec(name="local", source="targets.yaml:2")
    debian12 = config.targets["debian-12"]
    assert isinstance(debian12, ContainerSpec)
    assert debian12.image == "portability/debian:12"
    assert debian12.copy == ("suites/app",)
    assert debian12.network == "none" and debian12.privileged is False
    assert debian12.source == "targets.yaml:3"
    assert config.groups == {"containers": ("debian-11", "debian-12")}
    assert config.path == project / "targets.yaml"
    assert config.base_dir == project.resolve()


def test_defaults_merge_under_each_target_of_the_kind(project):
    config = load_text(project, """
        defaults:
          container: {privileged: true, user: app, env: {LANG: C.UTF-8, DEBUG: 1}}
        targets:
          a: {kind: container, image: x, env: {DEBUG: 0, EXTRA: yes}}
          b: {kind: container, image: y, privileged: false}
          h: {kind: local}
        """)
    a, b = config.targets["a"], config.targets["b"]
    assert a.privileged is True and a.user == "app"
    # env mappings add up, the target's keys win; values keep their YAML text for the env.
    assert a.env == {"LANG": "C.UTF-8", "DEBUG": "0", "EXTRA": "yes"}
    assert b.privileged is False and b.env == {"LANG": "C.UTF-8", "DEBUG": "1"}
    assert config.targets["h"].env == {}


def test_yaml_anchors_and_merge_keys(project):
    # Top-level `x-` keys hold anchors (the docker-compose convention) and are otherwise ignored.
    config = load_text(project, """
        x-env: &env {LANG: C.UTF-8}
        targets:
          a: &base {kind: container, image: x, user: app, env: *env}
          b:
            <<: *base
            image: y
          c:
            <<: [{kind: container, image: first}, {kind: local, image: second, user: u}]
        """)
    assert config.targets["b"].image == "y" and config.targets["b"].user == "app"
    assert config.targets["b"].env == {"LANG": "C.UTF-8"}
    # Earlier merge sources win over later ones.
    assert config.targets["c"].kind == "container" and config.targets["c"].image == "first"
    assert config.targets["c"].user == "u"


def test_scalars_keep_their_source_text_for_string_options(project):
    config = load_text(project, """
        targets:
          a: {kind: container, image: "x", user: 1000, workdir: 3.10, env: {FLAG: true, EMPTY: }}
        """)
    spec = config.targets["a"]
    assert spec.user == "1000" and spec.workdir == "3.10"
    assert spec.env == {"FLAG": "true", "EMPTY": ""}


def test_copy_accepts_a_single_string_and_dest_suffix(project):
    config = load_text(project, """
        targets:
          a: {kind: container, image: x, copy: "suites/app:/opt/app"}
          b:
            kind: container
            image: x
            copy:
            #  - suites/app
        """)
    assert config.targets["a"].copy == ("suites/app:/opt/app",)
    assert config.targets["b"].copy == ()
    assert error_of(project, "targets:\n  c:\n    kind: local\n    copy:\n      - [a]\n") == (
        "targets.yaml:5: target 'c': key 'copy' item 1 expects a string, got a list")


def test_fake_kind_option_types(project, fake_kind):
    config = load_text(project, """
        targets:
          f:
            kind: fake
            memory: 512
            ratio: 2
            enabled: true
            mode: image
            disks: one
            ports: [22, 80]
            limits: {cpu: 2}
            where: some/dir
        """)
    spec = config.targets["f"]
    assert isinstance(spec, FakeSpec)
    assert (spec.memory, spec.ratio, spec.enabled, spec.mode) == (512, 2.0, True, "image")
    assert isinstance(spec.ratio, float)
    assert spec.disks == ("one",) and spec.ports == (22, 80)
    assert spec.limits == {"cpu": 2} and spec.where == Path("some/dir") and spec.label is None


# -- one-line errors naming file:line and key -----------------------------------------------

def test_missing_file(project):
    with pytest.raises(ConfigError, match=r"^nope\.yaml: no such targets file$"):
        load(project / "nope.yaml")


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_file(project, text):
    assert error_of(project, text).startswith("targets.yaml: the file is empty")


def test_invalid_yaml_names_the_line(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          bad: [unclosed
        other: 1
        """)
    # The wording after the comma differs between libyaml and the pure-Python parser.
    assert message.startswith("targets.yaml:4: invalid YAML: while parsing a flow sequence "
                              "started at line 3, "), message


def test_tab_indentation_is_invalid_yaml_with_line(project):
    message = error_of(project, "targets:\n  local:\n\tkind: local\n")
    assert message.startswith("targets.yaml:3: invalid YAML"), message


def test_top_level_must_be_a_mapping(project):
    assert error_of(project, "- local\n- debian\n").startswith(
        "targets.yaml:1: the top level must be a mapping with targets:, groups:, defaults:")


def test_unknown_top_level_key_with_suggestion(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
        group:
          g: [local]
        """)
    assert message == ("targets.yaml:3: unknown top-level key 'group' (did you mean 'groups'?); "
                       "expected targets, groups, defaults (or x-NAME for YAML anchors)")


def test_missing_and_empty_targets_section(project):
    assert error_of(project, "groups: {}\n").startswith("targets.yaml:1: no `targets:` section")
    assert error_of(project, "targets:\n").startswith(
        "targets.yaml:1: `targets:` declares no targets")
    assert error_of(project, "targets: [a, b]\n").startswith(
        "targets.yaml:1: `targets:` must map target names to specs (got a list)")


def test_unknown_kind_lists_the_kinds(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          box: {kind: containr, image: x}
        """)
    assert message == ("targets.yaml:3: target 'box': unknown kind 'containr' (did you mean "
                       "'container'?); kinds: container, local, qemu, ssh, vagrant")


def test_missing_kind(project):
    message = error_of(project, """
        targets:
          box: {image: x}
        """)
    assert message == ("targets.yaml:2: target 'box': missing `kind:` "
                       "(one of container, local, qemu, ssh, vagrant)")
    assert error_of(project, "targets:\n  box:\n").startswith(
        "targets.yaml:2: target 'box': needs a mapping with `kind:`")


def test_unknown_key_did_you_mean(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          debian-12:
            kind: container
            imag: portability/debian:12
        """)
    assert message.startswith("targets.yaml:5: target 'debian-12': unknown key 'imag' "
                              "(did you mean 'image'?); valid keys: kind, ")
    assert "engine_url" in message


def test_name_is_not_an_option(project):
    message = error_of(project, """
        targets:
          a: {kind: local, name: b}
        """)
    assert message.startswith("targets.yaml:2: target 'a': 'name' is not an option")


@pytest.mark.parametrize("value, expected, got", [
    ("privileged: maybe", "true or false", "'maybe' (a string)"),
    ("privileged: 1", "true or false", "'1' (an integer)"),
    ("user: [a, b]", "a string", "a list"),
    ("env: [A=1]", "a mapping of names to strings", "a list"),
    ("copy: {a: b}", "a list of strings", "a mapping"),
    ("network: ", "a string", "nothing (null)"),
])
def test_wrong_type_says_expected_type(project, value, expected, got):
    key = value.split(":")[0]
    message = error_of(project, f"""
        targets:
          c:
            kind: container
            image: x
            {value}
        """)
    assert message == (f"targets.yaml:5: target 'c': key {key!r} expects {expected}, "
                       f"got {got}"), message


def test_wrong_types_on_fake_kind(project, fake_kind):
    cases = {
        "memory: lots": "key 'memory' expects an integer, got 'lots' (a string)",
        "memory: 1.5": "key 'memory' expects an integer, got '1.5' (a number)",
        "ratio: true": "key 'ratio' expects a number, got 'true' (a boolean)",
        "ports: [22, http]": "key 'ports' item 2 expects an integer, got 'http' (a string)",
        "limits: {cpu: many}": "key 'limits': key 'cpu' expects an integer, got 'many' (a string)",
        "mode: hots": "key 'mode' must be one of 'host', 'image', got 'hots' (did you mean 'host'?)",
    }
    for option, expected in cases.items():
        text = f"targets:\n  f:\n    kind: fake\n    {option}\n"
        if not option.startswith("memory"):
            text += "    memory: 1\n"
        message = error_of(project, text)
        assert message == f"targets.yaml:4: target 'f': {expected}", message


def test_missing_required_option(project, fake_kind):
    message = error_of(project, "targets:\n  f: {kind: fake, ratio: 2}\n")
    assert message == "targets.yaml:2: target 'f': missing required key 'memory'"


def test_spec_validate_hook(project, fake_kind):
    message = error_of(project, "targets:\n  ok: {kind: local}\n  f: {kind: fake, memory: 0}\n")
    assert message == "targets.yaml:3: target 'f': `memory:` must be positive (MiB)"


def test_container_needs_image_or_build(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          c: {kind: container, user: app}
        """)
    assert message.startswith("targets.yaml:3: target 'c': needs `image:`")


def test_duplicate_target_name(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          debian-12: {kind: container, image: a}
          debian-12: {kind: container, image: b}
        """)
    assert message == "targets.yaml:4: duplicate target 'debian-12' (first at line 3)"


def test_duplicate_key_inside_a_target(project):
    message = error_of(project, """
        targets:
          c:
            kind: container
            image: a
            image: b
        """)
    assert message == "targets.yaml:5: target 'c': duplicate key 'image' (first at line 4)"


def test_duplicate_top_level_key(project):
    message = error_of(project, "targets: {a: {kind: local}}\ntargets: {b: {kind: local}}\n")
    assert message == "targets.yaml:2: duplicate top-level key 'targets' (first at line 1)"


def test_invalid_target_names(project):
    assert error_of(project, "targets:\n  'a,b': {kind: local}\n").startswith(
        "targets.yaml:2: target name 'a,b' may only contain")
    assert error_of(project, "targets:\n  all: {kind: local}\n").startswith(
        "targets.yaml:2: target name 'all' is reserved")


def test_group_naming_an_unknown_target(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          debian-12: {kind: container, image: a}
        groups:
          containers: [debian-12, debain-11]
        """)
    assert message == ("targets.yaml:5: group 'containers': unknown target 'debain-11' "
                       "(did you mean 'debian-12'?); targets: local, debian-12")


def test_group_clashing_with_a_target(project):
    message = error_of(project, """
        targets:
          local: {kind: local}
          box: {kind: container, image: a}
        groups:
          box: [local]
        """)
    assert message == ("targets.yaml:5: group 'box' has the same name as the target declared "
                       "at line 3; rename one of them")


def test_reserved_group_names_and_bad_members(project):
    base = "targets:\n  h: {kind: local}\ngroups:\n"
    assert error_of(project, base + "  all: [h]\n").startswith(
        "targets.yaml:4: group name 'all' is reserved")
    assert error_of(project, base + "  g: {h: 1}\n").startswith(
        "targets.yaml:4: group 'g' must be a list of target names (got a mapping)")
    assert error_of(project, base + "  g: [h, [x]]\n").startswith(
        "targets.yaml:4: group 'g': members must be target names (got a list)")


def test_nested_groups_flatten_and_cycles_are_errors(project):
    config = load_text(project, """
        targets:
          a: {kind: local}
          b: {kind: local, workdir: /tmp}
          c: {kind: local, workdir: /var/tmp}
        groups:
          first: [a, b]
          all-of-them: [first, c, a]
          single: c
        """)
    assert config.groups == {"first": ("a", "b"), "all-of-them": ("a", "b", "c"),
                             "single": ("c",)}
    message = error_of(project, """
        targets:
          a: {kind: local}
        groups:
          x: [a, y]
          y: [x]
        """)
    assert message.startswith("targets.yaml:5: group 'y': groups include each other in a cycle")


def test_copy_path_must_exist_relative_to_the_file(project, monkeypatch):
    message = error_of(project, """
        targets:
          c:
            kind: container
            image: x
            copy:
              - suites/app
              - suites/ap:/opt/app
        """)
    assert message == (f"targets.yaml:7: target 'c': copy path 'suites/ap' does not exist "
                       f"(relative paths start at {project.resolve()})")
    # Relative to the file's directory, not the working directory.
    path = write(project, "targets:\n  c: {kind: container, image: x, copy: [suites/app]}\n")
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(path)
    assert config.targets["c"].copy == ("suites/app",)
    assert config.path == path and config.base_dir == project.resolve()


def test_defaults_errors(project):
    assert error_of(project, """
        defaults:
          containers: {privileged: true}
        targets:
          a: {kind: local}
        """).startswith("targets.yaml:2: defaults: unknown kind 'containers' (did you mean "
                        "'container'?)")
    assert error_of(project, """
        defaults:
          container: {privilegd: true}
        targets:
          a: {kind: container, image: x}
        """).startswith("targets.yaml:2: defaults for kind 'container': unknown key 'privilegd' "
                        "(did you mean 'privileged'?)")
    # Checked even when no target uses the kind.
    assert error_of(project, """
        defaults:
          container: {privileged: sometimes}
        targets:
          a: {kind: local}
        """) == ("targets.yaml:2: defaults for kind 'container': key 'privileged' expects true "
                 "or false, got 'sometimes' (a string)")
    assert error_of(project, """
        defaults:
          local: {kind: local}
        targets:
          a: {kind: local}
        """).startswith("targets.yaml:2: defaults for kind 'local': `kind:` is implied")


def test_kind_module_missing_a_package_says_what_to_install(project, tmp_path, monkeypatch):
    (tmp_path / "needs_pkg_kind.py").write_text("import portability_no_such_engine_lib\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KIND_MODULES, "exotic", "needs_pkg_kind")
    message = error_of(project, "targets:\n  e: {kind: exotic}\n")
    assert message == ("targets.yaml:2: target 'e': kind 'exotic' needs the Python package "
                       "'portability_no_such_engine_lib', which is not installed: "
                       "pip install portability_no_such_engine_lib")


def test_kind_module_absent_or_broken(project, tmp_path, monkeypatch):
    monkeypatch.setitem(KIND_MODULES, "ghost", "portability.targets.ghost_kind_that_is_absent")
    assert error_of(project, "targets:\n  g: {kind: ghost}\n").startswith(
        "targets.yaml:2: target 'g': kind 'ghost' is not available in this installation")
    (tmp_path / "broken_kind.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KIND_MODULES, "broken", "broken_kind")
    assert error_of(project, "targets:\n  b: {kind: broken}\n") == (
        "targets.yaml:2: target 'b': kind 'broken' failed to load: RuntimeError: half written")


def test_label_is_the_path_when_outside_the_cwd(tmp_path, monkeypatch):
    path = tmp_path / "conf" / "t.yaml"
    path.parent.mkdir()
    path.write_text("targets:\n  a: {kind: nope}\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=rf"^{path}:2: target 'a': unknown kind 'nope'"):
        load(path)


# -- selection -------------------------------------------------------------------------------

@pytest.fixture
def example(project) -> Config:
    return load_text(project, """
        targets:
          local: {kind: local}
          debian-12: {kind: container, image: "portability/debian:12"}
          debian-11: {kind: container, image: "portability/debian:11"}
          alpine: {kind: container, image: alpine}
        groups:
          debians: [debian-11, debian-12]
          musl: [alpine]
        """)


@pytest.mark.parametrize("expression, expected", [
    (None, ["local"]),
    ("", ["local"]),
    ("  ", ["local"]),
    (" , ,", ["local"]),
    ("all", ["local", "debian-12", "debian-11", "alpine"]),
    ("debian-11", ["debian-11"]),
    ("debian-11,local", ["local", "debian-11"]),
    ("debians", ["debian-12", "debian-11"]),
    ("kind:container", ["debian-12", "debian-11", "alpine"]),
    ("kind:local", ["local"]),
    ("all,!debians", ["local", "alpine"]),
    ("!local", ["debian-12", "debian-11", "alpine"]),
    ("!local,!alpine", ["debian-12", "debian-11"]),
    ("!debian-11,kind:container", ["debian-12", "alpine"]),
    ("debians, musl , debian-12,,", ["debian-12", "debian-11", "alpine"]),
    ("debian-*", ["debian-12", "debian-11"]),
    ("kind:qemu,local", ["local"]),
])
def test_selection_grammar(example, expression, expected):
    assert example.select(expression) == expected


@pytest.mark.parametrize("expression, message", [
    ("debain-12", "unknown target or group 'debain-12' in --targets (did you mean 'debian-12'?); "
                  "targets: local, debian-12, debian-11, alpine; groups: debians, musl"),
    ("local,zzz", "unknown target or group 'zzz' in --targets; "
                  "targets: local, debian-12, debian-11, alpine; groups: debians, musl"),
    ("kind:containr", "unknown kind 'containr' in --targets (did you mean 'container'?); "
                      "kinds: container, local, qemu, ssh, vagrant"),
    ("!all", "--targets=!all selects no targets; "
             "targets: local, debian-12, debian-11, alpine; groups: debians, musl"),
    ("kind:qemu", "--targets=kind:qemu selects no targets; "
                  "targets: local, debian-12, debian-11, alpine; groups: debians, musl"),
    ("ubuntu-*", "'ubuntu-*' in --targets matches no target; "
                 "targets: local, debian-12, debian-11, alpine; groups: debians, musl"),
    ("local,!", "empty term '!' in --targets; write !NAME to exclude a target"),
])
def test_selection_errors(example, expression, message):
    with pytest.raises(ConfigError) as info:
        example.select(expression)
    assert str(info.value) == message


def test_no_selection_adds_the_embedded_local_when_undeclared(project):
    config = load_text(project, "targets:\n  c: {kind: container, image: x}\n")
    assert config.select("all") == ["c"]
    assert config.select(None) == ["local"]
    assert config.targets["local"] == LocalSpec(name="local")
    # `all` and `kind:` still mean what the file declares.
    assert config.select("all") == ["c"]
    assert config.select("kind:local,c") == ["c"]
    assert config.select("c,local") == ["local", "c"]


def test_declared_local_is_used_as_is(project):
    config = load_text(project, "targets:\n  c: {kind: container, image: x}\n"
                                "  local: {kind: local, workdir: /tmp/w}\n")
    assert config.select(None) == ["local"]
    assert config.targets["local"].workdir == "/tmp/w"


def test_expand_for_the_targets_marker(example):
    assert example.expand(("debians", "local")) == ["local", "debian-12", "debian-11"]
    assert example.expand(["kind:container", "!alpine"]) == ["debian-12", "debian-11"]
    assert example.expand("musl,local") == ["local", "alpine"]
    assert example.expand(["kind:qemu"]) == []
    with pytest.raises(ConfigError, match=r"^unknown target or group 'debain' in "
                                          r"@pytest\.mark\.targets"):
        example.expand(["debain"])
    with pytest.raises(ConfigError, match="takes target/group names as strings"):
        example.expand([["local"]])


def test_default_config(tmp_path):
    config = default_config(tmp_path)
    assert config.path is None
    assert config.targets == {"local": LocalSpec(name="local")}
    assert config.groups == {}
    assert config.base_dir == tmp_path.resolve()
    assert config.select(None) == ["local"] and config.select("all") == ["local"]


# -- finding the file -------------------------------------------------------------------------

def test_find_targets_file_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_targets_file(None, tmp_path, None) is None
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "t.yaml").write_text(EXAMPLE)
    assert find_targets_file(None, tmp_path, "ci/t.yaml") == tmp_path / "ci" / "t.yaml"
    (tmp_path / "targets.yaml").write_text(EXAMPLE)
    assert find_targets_file(None, tmp_path, "ci/t.yaml") == tmp_path / "targets.yaml"
    assert find_targets_file("ci/t.yaml", tmp_path, None) == Path("ci/t.yaml")


def test_find_targets_file_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^--targets-file missing\.yaml: no such file$"):
        find_targets_file("missing.yaml", tmp_path, None)
    with pytest.raises(ConfigError, match=r"^--targets-file \.: is not a file$"):
        find_targets_file(".", tmp_path, None)
    with pytest.raises(ConfigError, match=r"^portability_targets_file = gone\.yaml \(ini option\)"):
        find_targets_file(None, tmp_path, "gone.yaml")


def test_every_kind_spec_is_loadable_generically(project):
    """Whatever kind modules exist, their Spec fields all have a hint the loader understands."""
    for kind in KIND_MODULES:
        try:
            from portability.targets import target_class

            spec_cls = target_class(kind).Spec
        except ImportError:
            continue  # a kind still being written
        hints = config_mod._hints(spec_cls)
        for name in config_mod._user_fields(spec_cls):
            assert name in hints, (kind, name)
            assert not config_mod._describe_hint(hints[name]).startswith("typing."), (kind, name)
