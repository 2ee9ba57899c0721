"""targets.yaml -> validated, immutable target specs; ``--targets`` selection expressions.

The file is read with PyYAML's composer rather than ``safe_load`` so that every value keeps
its node: error messages name the line, duplicate keys (which ``safe_load`` silently
collapses) are caught, and scalars keep their source text (``kernel: 6.10`` stays "6.10",
not the float 6.1). Options are checked against the kind's ``Spec`` dataclass fields and
type hints, so a new kind needs no change here.

Every mistake a user can make is a ``ConfigError`` with one line:
``targets.yaml:7: target 'debian-12': unknown key 'imag' (did you mean 'image'?)``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import fnmatch
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from portability.errors import ConfigError
from portability.targets import KIND_MODULES, target_class
from portability.targets.base import Spec, resolve_copy

TOP_LEVEL_KEYS = ("targets", "groups", "defaults")
#: Spec fields filled in by the loader, never written by the user.
_INTERNAL_FIELDS = frozenset({"name", "kind", "source"})
#: Names that appear in test ids and selection expressions: no commas, '!', ':', spaces, globs.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@-]*")
_NAME_RULE = "may only contain letters, digits and . _ - + @ (and not start with . - + @)"
_GLOB_CHARS = frozenset("*?[")
#: The pip distribution to install when a kind's module lacks an import.
_PIP_NAMES = {"docker": "docker", "paramiko": "paramiko", "vagrant": "python-vagrant",
              "yaml": "pyyaml", "testinfra": "pytest-testinfra", "jinja2": "jinja2"}

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Config:
    """The targets a run can use. Immutable apart from ``select``/``expand`` adding the
    embedded ``local`` target when the file does not declare one."""

    #: The file loaded; None for the embedded default.
    path: Path | None
    #: Target name -> its kind's Spec instance, in declaration order.
    targets: dict[str, Spec]
    #: Group name -> target names (nested groups already flattened), in declaration order.
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Where relative paths resolve when there is no file (the rootdir).
    root: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # `all` and `kind:X` mean what the file declares, even after the implicit local is added.
        object.__setattr__(self, "_declared", tuple(self.targets))

    @property
    def base_dir(self) -> Path:
        """Directory relative ``copy:``/``build:`` paths are resolved against."""
        if self.path is not None:
            return self.path.resolve().parent
        return (self.root or Path.cwd()).resolve()

    @property
    def declared(self) -> tuple[str, ...]:
        """Target names the file declares, in order (without the implicit local)."""
        return self._declared  # type: ignore[attr-defined]

    def select(self, expression: str | None) -> list[str]:
        """Target names for a ``--targets`` expression, in declaration order.

        Terms are comma-separated: ``all``, a target name, a group name, ``kind:KIND``, a glob
        (``debian-*``); ``!term`` excludes (after all inclusions; only exclusions start from
        ``all``). None or empty selects ``local``.
        """
        terms = _split(expression or "")
        if not terms:
            return [self._local()]
        names = self._resolve(terms, "--targets")
        if not names:
            raise ConfigError(f"--targets={expression.strip()} selects no targets; "
                              f"{self._inventory()}")
        return names

    def expand(self, terms: Iterable[str]) -> list[str]:
        """Target names for the terms of ``@pytest.mark.targets(...)`` (same grammar as
        ``--targets``; an empty result is allowed)."""
        if isinstance(terms, str):
            terms = [terms]
        flat: list[str] = []
        for term in terms:
            if not isinstance(term, str):
                raise ConfigError(f"@pytest.mark.targets takes target/group names as strings, "
                                  f"got {term!r}")
            flat.extend(_split(term))
        return self._resolve(flat, "@pytest.mark.targets")

    # -- selection internals ---------------------------------------------------------------

    def _local(self) -> str:
        if "local" not in self.targets:
            from portability.targets.local import LocalSpec

            self.targets["local"] = LocalSpec(name="local")
        return "local"

    def _resolve(self, terms: list[str], where: str) -> list[str]:
        included: list[str] = []
        excluded: set[str] = set()
        only_exclusions = True
        for term in terms:
            negate = term.startswith("!")
            body = term[1:].strip() if negate else term
            if not body:
                raise ConfigError(f"empty term {term!r} in {where}; write !NAME to exclude a target")
            names = self._term(body, where)
            if negate:
                excluded.update(names)
            else:
                only_exclusions = False
                included.extend(names)
        if only_exclusions:
            included = list(self.declared)
        order = {name: i for i, name in enumerate(self.targets)}
        if "local" in included and "local" not in self.declared:
            order["local"] = -1  # the implicit host baseline comes first
        chosen = {name for name in included if name not in excluded}
        return sorted(chosen, key=order.__getitem__)

    def _term(self, term: str, where: str) -> list[str]:
        if term == "all":
            return list(self.declared)
        if term.startswith("kind:"):
            kind = term[len("kind:"):].strip()
            if kind not in KIND_MODULES:
                raise ConfigError(f"unknown kind {kind!r} in {where}{_did_you_mean(kind, KIND_MODULES)}"
                                  f"; kinds: {', '.join(sorted(KIND_MODULES))}")
            return [n for n in self.declared if self.targets[n].kind == kind]
        if term in self.targets:
            return [term]
        if term in self.groups:
            return list(self.groups[term])
        if term == "local":
            return [self._local()]
        if _GLOB_CHARS & set(term):
            matched = [n for n in self.declared if fnmatch.fnmatchcase(n, term)]
            if not matched:
                raise ConfigError(f"{term!r} in {where} matches no target; {self._inventory()}")
            return matched
        candidates = [*self.declared, *self.groups, "all"]
        raise ConfigError(f"unknown target or group {term!r} in {where}"
                          f"{_did_you_mean(term, candidates)}; {self._inventory()}")

    def _inventory(self) -> str:
        text = f"targets: {', '.join(self.declared) or 'none'}"
        if self.groups:
            text += f"; groups: {', '.join(self.groups)}"
        return text


def default_config(base_dir: Path) -> Config:
    """The embedded default: the local host only."""
    from portability.targets.local import LocalSpec

    return Config(path=None, targets={"local": LocalSpec(name="local")}, groups={},
                  root=Path(base_dir))


def find_targets_file(explicit: str | None, rootdir: Path, ini_value: str | None) -> Path | None:
    """``--targets-file``, else ``targets.yaml`` in the rootdir, else the ini option
    ``portability_targets_file`` (relative to the rootdir); None means the embedded default."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"--targets-file {explicit}: "
                              f"{'is not a file' if path.exists() else 'no such file'}")
        return path
    default = Path(rootdir) / "targets.yaml"
    if default.is_file():
        return default
    if ini_value:
        path = Path(rootdir) / ini_value
        if not path.is_file():
            raise ConfigError(f"portability_targets_file = {ini_value} (ini option): no such file "
                              f"{path}")
        return path
    return None


def load(path: Path) -> Config:
    """Read and validate a targets file."""
    path = Path(path)
    label = _label(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such targets file") from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory, not a targets file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    return _Parser(label, path.resolve().parent).load(text, path)


# -- loading -------------------------------------------------------------------------------

class _Parser:
    def __init__(self, label: str, base_dir: Path):
        self.label = label
        self.base_dir = base_dir
        self.target_lines: dict[str, int] = {}

    def error(self, node: Node | None, message: str) -> ConfigError:
        where = f"{self.label}:{_line(node)}" if node is not None else self.label
        return ConfigError(f"{where}: {message}")

    # -- document ---------------------------------------------------------------------------

    def load(self, text: str, path: Path) -> Config:
        try:
            root = yaml.compose(text, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            context = exc.context or ""
            if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                context += f" started at line {exc.context_mark.line + 1},"
            what = " ".join(p for p in (context, exc.problem) if p)
            raise ConfigError(f"{self.label}{line}: invalid YAML: {what}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.label}: invalid YAML: {_one_line(exc)}") from None
        if root is None or _is_null(root):
            raise ConfigError(f"{self.label}: the file is empty; declare targets, e.g. "
                              "`targets: {local: {kind: local}}`")
        if not isinstance(root, MappingNode):
            raise self.error(root, f"the top level must be a mapping with "
                                   f"{', '.join(k + ':' for k in TOP_LEVEL_KEYS)} (got {_got(root)})")
        top = self.pairs(root, "", "top-level key")
        for key, (key_node, _value) in top.items():
            if key not in TOP_LEVEL_KEYS and not key.startswith("x-"):
                raise self.error(key_node, f"unknown top-level key {key!r}"
                                           f"{_did_you_mean(key, TOP_LEVEL_KEYS)}; "
                                           f"expected {', '.join(TOP_LEVEL_KEYS)} "
                                           "(or x-NAME for YAML anchors)")
        defaults = self.load_defaults(top.get("defaults"))
        targets = self.load_targets(top.get("targets"), root, defaults)
        groups = self.load_groups(top.get("groups"), targets)
        # Absolute, so base_dir stays right when a test changes the working directory.
        return Config(path=path.absolute(), targets=targets, groups=groups)

    def pairs(self, node: MappingNode, context: str, noun: str) -> dict[str, tuple[Node, Node]]:
        """Key -> (key node, value node); duplicate keys are errors; ``<<`` merges honoured."""
        own: list[tuple[str, Node, Node]] = []
        merged: dict[str, tuple[Node, Node]] = {}
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                # YAML merge: earlier sources win over later ones, the mapping's own keys over all.
                for source in reversed(sources):
                    if not isinstance(source, MappingNode):
                        raise self.error(source, f"{context}`<<:` must merge a mapping")
                    merged.update(self.pairs(source, context, noun))
                continue
            if not isinstance(key_node, ScalarNode) or _is_null(key_node):
                raise self.error(key_node, f"{context}a {noun} must be a plain name, "
                                           f"got {_got(key_node)}")
            key = key_node.value
            if key in seen:
                raise self.error(key_node, f"{context}duplicate {noun} {key!r} "
                                           f"(first at line {_line(seen[key])})")
            seen[key] = key_node
            own.append((key, key_node, value_node))
        result = dict(merged)
        for key, key_node, value_node in own:
            result[key] = (key_node, value_node)
        return result

    # -- defaults ---------------------------------------------------------------------------

    def load_defaults(self, entry: tuple[Node, Node] | None) -> dict[str, dict[str, tuple[Node, Node]]]:
        if entry is None or _is_null(entry[1]):
            return {}
        key_node, node = entry
        if not isinstance(node, MappingNode):
            raise self.error(node, f"`defaults:` must map kinds to options, e.g. "
                                   f"`defaults: {{container: {{network: none}}}}` (got {_got(node)})")
        result = {}
        for kind, (kind_node, options) in self.pairs(node, "defaults: ", "kind").items():
            if kind not in KIND_MODULES:
                raise self.error(kind_node, f"defaults: unknown kind {kind!r}"
                                            f"{_did_you_mean(kind, KIND_MODULES)}; "
                                            f"kinds: {', '.join(sorted(KIND_MODULES))}")
            if _is_null(options):
                result[kind] = {}
                continue
            if not isinstance(options, MappingNode):
                raise self.error(options, f"defaults for kind {kind!r} must be a mapping of "
                                          f"options (got {_got(options)})")
            opts = self.pairs(options, f"defaults for kind {kind!r}: ", "key")
            if "kind" in opts:
                raise self.error(opts["kind"][0], f"defaults for kind {kind!r}: `kind:` is "
                                                  "implied by the section; remove it")
            result[kind] = opts
        return result

    # -- targets ----------------------------------------------------------------------------

    def load_targets(self, entry, root: Node, defaults) -> dict[str, Spec]:
        if entry is None:
            raise self.error(root, "no `targets:` section; declare targets, e.g. "
                                   "`targets: {local: {kind: local}}`")
        key_node, node = entry
        if _is_null(node) or (isinstance(node, MappingNode) and not node.value):
            raise self.error(key_node, "`targets:` declares no targets; add e.g. "
                                       "`local: {kind: local}`")
        if not isinstance(node, MappingNode):
            raise self.error(node, f"`targets:` must map target names to specs (got {_got(node)})")
        specs: dict[str, Spec] = {}
        checked_defaults: set[str] = set()
        for name, (name_node, spec_node) in self.pairs(node, "", "target").items():
            if not _NAME_RE.fullmatch(name):
                raise self.error(name_node, f"target name {name!r} {_NAME_RULE}")
            if name == "all":
                raise self.error(name_node, "target name 'all' is reserved (`--targets=all` "
                                            "selects every target); rename it")
            self.target_lines[name] = _line(name_node)
            specs[name] = self.load_target(name, name_node, spec_node, defaults, checked_defaults)
        # Defaults for kinds no target uses are still checked where the kind can be loaded.
        for kind, opts in defaults.items():
            if kind not in checked_defaults and opts:
                try:
                    cls = target_class(kind).Spec
                except Exception:
                    continue
                self.options(cls, opts, f"defaults for kind {kind!r}: ")
        return specs

    def load_target(self, name: str, name_node: Node, node: Node, defaults,
                    checked_defaults: set[str]) -> Spec:
        context = f"target {name!r}: "
        if _is_null(node):
            raise self.error(name_node, f"{context}needs a mapping with `kind:` "
                                        f"(one of {', '.join(sorted(KIND_MODULES))})")
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{context}must be a mapping with `kind:` and options "
                                   f"(got {_got(node)})")
        opts = self.pairs(node, context, "key")
        if "kind" not in opts:
            raise self.error(name_node, f"{context}missing `kind:` "
                                        f"(one of {', '.join(sorted(KIND_MODULES))})")
        kind_key, kind_node = opts.pop("kind")
        if not isinstance(kind_node, ScalarNode) or _is_null(kind_node):
            raise self.error(kind_node, f"{context}`kind:` must be a name "
                                        f"(one of {', '.join(sorted(KIND_MODULES))})")
        kind = kind_node.value
        if kind not in KIND_MODULES:
            raise self.error(kind_node, f"{context}unknown kind {kind!r}"
                                        f"{_did_you_mean(kind, KIND_MODULES)}; "
                                        f"kinds: {', '.join(sorted(KIND_MODULES))}")
        cls = self.spec_class(kind, context, kind_node)
        from_defaults = self.options(cls, defaults.get(kind, {}), f"defaults for kind {kind!r}: ")
        checked_defaults.add(kind)
        own = self.options(cls, opts, context)
        values = {key: value for key, (value, _node) in from_defaults.items()}
        hints = _hints(cls)
        for key, (value, _node) in own.items():
            base = values.get(key)
            if isinstance(value, Mapping) and isinstance(base, Mapping) and \
                    _is_mapping_hint(hints.get(key)):
                # env-like mappings add up: the target's keys override the kind's defaults.
                value = {**base, **value}
            values[key] = value
        nodes = {key: node for key, (_v, node) in {**from_defaults, **own}.items()}
        for key, spec_field in _user_fields(cls).items():
            if key not in values and spec_field.default is dataclasses.MISSING and \
                    spec_field.default_factory is dataclasses.MISSING:
                raise self.error(name_node, f"{context}missing required key {key!r}")
        self.check_copy(values.get("copy"), nodes.get("copy"), context)
        try:
            spec = cls(name=name, kind=kind, source=f"{self.label}:{_line(name_node)}", **values)
        except (TypeError, ValueError) as exc:
            raise self.error(name_node, f"{context}{_one_line(exc)}") from None
        validate = getattr(spec, "validate", None)
        if callable(validate):
            problem = validate()
            if problem:
                raise self.error(name_node, f"{context}{problem}")
        return spec

    def spec_class(self, kind: str, context: str, node: Node) -> type[Spec]:
        try:
            return target_class(kind).Spec
        except ImportError as exc:
            missing = getattr(exc, "name", None) or ""
            if missing and missing.split(".")[0] != "portability":
                package = _PIP_NAMES.get(missing.split(".")[0], missing.split(".")[0])
                raise self.error(node, f"{context}kind {kind!r} needs the Python package "
                                       f"{package!r}, which is not installed: "
                                       f"pip install {package}") from None
            raise self.error(node, f"{context}kind {kind!r} is not available in this "
                                   f"installation ({_one_line(exc)})") from None
        except Exception as exc:  # a kind module that fails to load must not be a traceback
            raise self.error(node, f"{context}kind {kind!r} failed to load: "
                                   f"{type(exc).__name__}: {_one_line(exc)}") from None

    def options(self, cls: type[Spec], opts: dict[str, tuple[Node, Node]],
                context: str) -> dict[str, tuple[Any, Node]]:
        """Coerce user options to the Spec's field types: key -> (value, value node)."""
        fields = _user_fields(cls)
        hints = _hints(cls)
        result = {}
        for key, (key_node, value_node) in opts.items():
            if key not in fields:
                if key in _INTERNAL_FIELDS:
                    hint = ("the target's name is its key under `targets:`" if key == "name"
                            else "it is filled in by the loader")
                    raise self.error(key_node, f"{context}{key!r} is not an option ({hint})")
                raise self.error(key_node, f"{context}unknown key {key!r}"
                                           f"{_did_you_mean(key, [*fields, 'kind'])}; "
                                           f"valid keys: {', '.join(['kind', *fields])}")
            value = self.coerce(value_node, hints.get(key, Any), f"{context}key {key!r}")
            result[key] = (value, value_node)
        return result

    def check_copy(self, copy: Any, node: Node | None, context: str) -> None:
        if not copy or node is None:
            return
        item_nodes = node.value if isinstance(node, SequenceNode) else [node] * len(copy)
        for entry, item_node in zip(copy, item_nodes):
            if not isinstance(entry, str):
                continue
            local, _remote = resolve_copy(entry, "/")
            if not local:
                raise self.error(item_node, f"{context}copy entry {entry!r} has no local path "
                                            "(write PATH or PATH:DEST)")
            path = Path(local)
            if not path.is_absolute():
                path = self.base_dir / path
            if not path.exists():
                raise self.error(item_node, f"{context}copy path {local!r} does not exist "
                                            f"(relative paths start at {self.base_dir})")

    # -- type coercion ----------------------------------------------------------------------

    def coerce(self, node: Node, hint: Any, where: str) -> Any:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Any or hint is object:
            return _construct(node)
        if origin is Union or origin is types.UnionType:
            options = [a for a in args if a is not type(None)]
            if _is_null(node) and len(options) < len(args):
                return None
            if len(options) == 1:
                return self.coerce(node, options[0], where)
            for option in options:
                try:
                    return self.coerce(node, option, where)
                except ConfigError:
                    continue
            raise self.mismatch(node, hint, where)
        if origin is Literal:
            value = _construct(node)
            if isinstance(node, ScalarNode) and all(isinstance(a, str) for a in args) \
                    and not _is_null(node):
                value = node.value  # `rootfs: yes` compares as the text the user wrote
            if value not in args:
                choices = ", ".join(repr(a) for a in args)
                dym = _did_you_mean(str(value), [str(a) for a in args])
                raise self.error(node, f"{where} must be one of {choices}, got {value!r}{dym}")
            return value
        if hint is str:
            if isinstance(node, ScalarNode) and not _is_null(node):
                return node.value  # the source text: `kernel: 6.10` stays "6.10"
            raise self.mismatch(node, hint, where)
        if hint is bool:
            value = _construct(node) if isinstance(node, ScalarNode) else None
            if isinstance(value, bool):
                return value
            raise self.mismatch(node, hint, where)
        if hint is int or hint is float:
            value = _construct(node) if isinstance(node, ScalarNode) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (hint is int and not isinstance(value, int)):
                raise self.mismatch(node, hint, where)
            return hint(value)
        if isinstance(hint, type) and issubclass(hint, os.PathLike):
            if isinstance(node, ScalarNode) and not _is_null(node):
                return hint(node.value)
            raise self.mismatch(node, hint, where)
        if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list):
            item_hint = args[0] if args and (origin is not tuple or args[-1] is Ellipsis or
                                             len(args) == 1) else Any
            if _is_null(node):
                items = []  # `copy:` with every entry commented out
            elif isinstance(node, ScalarNode) and item_hint in (str, Any):
                items = [node.value]  # a single string stands for a one-item list
            elif isinstance(node, SequenceNode):
                items = [self.coerce(item, item_hint, f"{where} item {i + 1}")
                         for i, item in enumerate(node.value)]
            else:
                raise self.mismatch(node, hint, where)
            return list(items) if origin is list or hint is list else tuple(items)
        if _is_mapping_hint(hint):
            if _is_null(node):
                return {}
            if not isinstance(node, MappingNode):
                raise self.mismatch(node, hint, where)
            value_hint = args[1] if len(args) == 2 else Any
            result = {}
            for key, (_k, value_node) in self.pairs(node, f"{where}: ", "key").items():
                if value_hint is str and _is_null(value_node):
                    result[key] = ""  # `VAR:` with no value is an empty string, as in a shell
                else:
                    result[key] = self.coerce(value_node, value_hint, f"{where}: key {key!r}")
            return result
        return _construct(node)

    def mismatch(self, node: Node, hint: Any, where: str) -> ConfigError:
        return self.error(node, f"{where} expects {_describe_hint(hint)}, got {_got(node)}")

    # -- groups -----------------------------------------------------------------------------

    def load_groups(self, entry, targets: dict[str, Spec]) -> dict[str, tuple[str, ...]]:
        if entry is None or _is_null(entry[1]):
            return {}
        _key, node = entry
        if not isinstance(node, MappingNode):
            raise self.error(node, f"`groups:` must map group names to lists of targets "
                                   f"(got {_got(node)})")
        raw: dict[str, list[tuple[str, Node]]] = {}
        name_nodes: dict[str, Node] = {}
        for name, (name_node, members) in self.pairs(node, "", "group").items():
            if not _NAME_RE.fullmatch(name):
                raise self.error(name_node, f"group name {name!r} {_NAME_RULE}")
            if name in targets:
                raise self.error(name_node, f"group {name!r} has the same name as the target "
                                            f"declared at line {self.target_lines[name]}; "
                                            "rename one of them")
            if name in ("all", "local"):
                raise self.error(name_node, f"group name {name!r} is reserved; rename the group")
            if _is_null(members):
                items: list[Node] = []
            elif isinstance(members, ScalarNode):
                items = [members]
            elif isinstance(members, SequenceNode):
                items = members.value
            else:
                raise self.error(members, f"group {name!r} must be a list of target names "
                                          f"(got {_got(members)})")
            for item in items:
                if not isinstance(item, ScalarNode) or _is_null(item):
                    raise self.error(item, f"group {name!r}: members must be target names "
                                           f"(got {_got(item)})")
            raw[name] = [(item.value, item) for item in items]
            name_nodes[name] = name_node
        groups: dict[str, tuple[str, ...]] = {}

        def flatten(name: str, stack: tuple[str, ...]) -> tuple[str, ...]:
            if name in groups:
                return groups[name]
            members: list[str] = []
            for member, member_node in raw[name]:
                if member in targets:
                    found = [member]
                elif member in raw:
                    if member in stack or member == name:
                        cycle = " -> ".join([*stack, name, member])
                        raise self.error(member_node, f"group {name!r}: groups include each "
                                                      f"other in a cycle ({cycle})")
                    found = list(flatten(member, (*stack, name)))
                else:
                    raise self.error(member_node, f"group {name!r}: unknown target {member!r}"
                                                  f"{_did_you_mean(member, [*targets, *raw])}; "
                                                  f"targets: {', '.join(targets)}")
                members.extend(m for m in found if m not in members)
            groups[name] = tuple(members)
            return groups[name]

        for name in raw:
            flatten(name, ())
        return {name: groups[name] for name in raw}


# -- helpers -------------------------------------------------------------------------------

def _split(expression: str) -> list[str]:
    return [term.strip() for term in expression.split(",") if term.strip()]


def _label(path: Path) -> str:
    """The file as the user knows it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None and node.start_mark else 0


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _construct(node: Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.split()) if text else type(exc).__name__


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _got(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_null(node):
        return "nothing (null)"
    value = _construct(node)
    kind = {bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), "a string")
    return f"{node.value!r} ({kind})"


def _describe_hint(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        text = " or ".join(_describe_hint(a) for a in options)
        return text + (" (or nothing)" if len(options) < len(args) else "")
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return "a path"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list):
        item = args[0] if args else Any
        return "a list" if item is Any else f"a list of {_plural(_describe_hint(item))}"
    if _is_mapping_hint(hint):
        value = args[1] if len(args) == 2 else Any
        return "a mapping" if value is Any else f"a mapping of names to {_plural(_describe_hint(value))}"
    return getattr(hint, "__name__", str(hint))


def _plural(text: str) -> str:
    for article in ("a ", "an "):
        if text.startswith(article) and " or " not in text:
            return text[len(article):] + "s"
    return text


def _is_mapping_hint(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _user_fields(cls: type[Spec]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL_FIELDS}


def _hints(cls: type[Spec]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: accept the YAML value as it is
        return {}
