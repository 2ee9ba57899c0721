"""JUnit XML post-processing: target facts and per-testcase target properties.

pytest's junitxml already writes each test report's ``user_properties`` as testcase
properties, and the plugin puts ``portability.target`` there; this adds what a CI system
wants beside it (kind, kernel) and the facts of every target at the testsuite level. A
testcase is matched through its own ``portability.target``/``portability.test`` properties
when present, else by junitxml's classname/name derived from the report's node ids.
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from portability.errors import ConfigError

PREFIX = "portability"


def junit_names(nodeid: str) -> tuple[str, str]:
    """(classname, name) as pytest's junitxml derives them from a node id (without prefix)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def _full_nodeid(test_id: str, target: str) -> str:
    """The item's node id: the plugin's target id is the last parameter id."""
    base, bracket, params = test_id.partition("[")
    if bracket:
        return f"{base}[{params[:-1]}-{target}]"
    return f"{test_id}[{target}]"


def add_junit_properties(xml_path: Path, report: Mapping[str, Any]) -> None:
    """Rewrite ``--junitxml`` output in place (atomically): a ``<properties>`` block per
    testsuite with ``portability.target.<name>.<fact>``, and per testcase
    ``portability.target`` / ``portability.kind`` / ``portability.kernel``, each added only
    if not already there."""
    xml_path = Path(xml_path)
    try:
        tree = ET.parse(xml_path)
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"{xml_path}: cannot read the JUnit XML: {exc}") from None
    root = tree.getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    targets: Mapping[str, Any] = report.get("targets", {})

    by_names: dict[tuple[str, str], str] = {}  # (classname, name) -> target
    by_name: dict[str, list[tuple[str, str]]] = {}  # name -> [(classname, target)]
    for test in report.get("tests", []):
        for target in test.get("outcomes", {}):
            classname, name = junit_names(_full_nodeid(test["id"], target))
            by_names[(classname, name)] = target
            by_name.setdefault(name, []).append((classname, target))

    for suite in suites:
        props = _properties(suite, first=True)
        existing = {p.get("name") for p in props}
        for name, info in targets.items():
            values = {"kind": info.get("kind"), "status": info.get("status")}
            values.update(info.get("facts") or {})
            for key, value in values.items():
                prop = f"{PREFIX}.target.{name}.{key}"
                if value is not None and prop not in existing:
                    ET.SubElement(props, "property", name=prop, value=str(value))
        if len(props) == 0:
            suite.remove(props)
        for case in suite.iter("testcase"):
            case_props = case.find("properties")
            have = {p.get("name"): p.get("value") for p in case_props} if case_props is not None else {}
            target = have.get(f"{PREFIX}.target") or _match(case, by_names, by_name)
            if target is None:
                continue
            info = targets.get(target) or {}
            wanted = {f"{PREFIX}.target": target, f"{PREFIX}.kind": info.get("kind"),
                      f"{PREFIX}.kernel": (info.get("facts") or {}).get("kernel_release")}
            missing = {k: v for k, v in wanted.items() if k not in have and v is not None}
            if not missing:
                continue
            if case_props is None:
                case_props = _properties(case, first=True)
            for key, value in missing.items():
                ET.SubElement(case_props, "property", name=key, value=str(value))
    _write_atomic(tree, xml_path)


def _match(case: ET.Element, by_names: Mapping[tuple[str, str], str],
           by_name: Mapping[str, list[tuple[str, str]]]) -> str | None:
    classname, name = case.get("classname", ""), case.get("name", "")
    target = by_names.get((classname, name))
    if target is None:  # junit_prefix puts a package in front of the classname
        for cls, t in by_name.get(name, ()):
            if classname.endswith("." + cls):
                return t
    return target


def _properties(element: ET.Element, *, first: bool) -> ET.Element:
    props = element.find("properties")
    if props is None:
        props = ET.Element("properties")
        element.insert(0 if first else len(element), props)
    return props


def _write_atomic(tree: ET.ElementTree, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            tree.write(fh, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
