"""The HTML report in a real headless browser (Debian's chromium; chromium-driver for clicks).

CI installs: ``apt-get install -y chromium chromium-driver``. Without them the tests skip on a
developer machine and fail under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import require

from portability.analysis import Cell, TargetInfo
from portability.report.html import render_html
from portability.report.json_report import build_report, write_text_atomic

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900"]
FACTS = dict(kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
             libc="glibc", libc_version="2.36", python="3.11.2", virtualization="none",
             shares_host_kernel=True)


def synthetic_report(n_tests: int) -> dict:
    """local + 4 containers; every 10th test diverges on debian-11 (userland), every 25th on
    all containers (kind); the rest pass everywhere."""
    targets = [TargetInfo("local", "local", "ready", facts=FACTS, ready_s=0.0)]
    for name, version, libc, py in (("debian-11", "11", "2.31", "3.9.2"), ("debian-12", "12", "2.36", "3.11.2"),
                                    ("debian-13", "13", "2.41", "3.13.5"), ("ubuntu-24.04", "24.04", "2.39", "3.12.3")):
        targets.append(TargetInfo(name, "container", "ready", ready_s=0.7, facts=dict(
            FACTS, os_id=name.split("-")[0], os_version_id=version, libc_version=libc, python=py,
            virtualization="container")))
    cells = []
    for i in range(n_tests):
        test_id = f"suites/test_gen.py::test_case_{i:04d}"
        for t in targets:
            outcome, message = "passed", None
            if i % 10 == 3 and t.name == "debian-11":
                outcome, message = "failed", f"AssertionError: <case {i}> needs glibc >= 2.34"
            elif i % 25 == 7 and t.kind == "container":
                outcome, message = "failed", "PermissionError: no init in a container"
            cells.append(Cell(test_id, t.name, outcome, duration_s=0.002, message=message))
    return build_report(session="browser-test", created="2026-11-30T21:00:00+00:00",
                        targets=targets, cells=cells,
                        observations={"suites/test_gen.py::test_case_0000": {
                            "version": {"local": "1.0", "debian-11": "0.9"}}})


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "chromium is not installed (apt-get install -y chromium chromium-driver)")
    return path


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "profile"
    path.mkdir()
    return path


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # start_new_session + killpg on timeout: chromium's renderer/zygote children go too.
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    finally:
        try:  # helpers (crashpad, zygote) can outlive the browser by a moment
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def dump_dom(chromium: str, profile: Path, url: str) -> str:
    result = run_chromium(chromium, profile, "--virtual-time-budget=5000", "--dump-dom", url)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


def test_page_renders_the_grid_and_a_prefilled_filter_hides_rows(chromium, profile, tmp_path):
    report = synthetic_report(200)
    page = tmp_path / "report.html"
    write_text_atomic(page, render_html(report))

    dom = dump_dom(chromium, profile, page.as_uri())
    rows = re.findall(r'<tr class="(row [^"]*)"', dom)
    assert len(rows) == 200
    divergent = report["summary"]["divergent"]
    assert divergent == sum(1 for i in range(200) if i % 10 == 3 or i % 25 == 7)
    assert all("divergent" in r for r in rows[:divergent])  # divergent rows first
    assert not any("hidden" in r for r in rows)
    assert 'data-shown="200"' in dom  # the script ran: nothing filtered yet
    assert dom.count('class="cell passed"') > 800
    assert re.search(r'<td class="cell failed" title="debian-11: failed\nAssertionError: &lt;case 3&gt;', dom)

    # The URL pre-fills the filter box; the script hides every non-matching row.
    filtered = dump_dom(chromium, profile, page.as_uri() + "#filter=userland")
    rows = re.findall(r'<tr class="(row [^"]*)"', filtered)
    visible = [r for r in rows if "hidden" not in r]
    userland = sum(1 for t in report["tests"]
                   if t["attribution"] and t["attribution"]["verdict"] == "userland")
    assert len(visible) == userland > 0
    assert all(r == "row divergent" for r in visible)
    assert f'data-shown="{userland}"' in filtered
    assert re.search(r'<span id="shown" class="meta">' + str(userland) + ' of 200 tests shown</span>', filtered)

    one = dump_dom(chromium, profile, page.as_uri() + "?filter=test_case_0042")
    assert len([r for r in re.findall(r'<tr class="(row [^"]*)"', one) if "hidden" not in r]) == 1


def test_screenshot_of_the_report(chromium, profile, tmp_path):
    page = tmp_path / "report.html"
    write_text_atomic(page, render_html(synthetic_report(60)))
    shot = tmp_path / "report.png"
    result = run_chromium(chromium, profile, f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000  # a rendered grid, not a blank page


def test_the_full_scale_report_opens(chromium, profile, tmp_path):
    """2,000 tests x 5 targets (the scale goal of issue 6) loads and the script runs over it."""
    page = tmp_path / "big.html"
    write_text_atomic(page, render_html(synthetic_report(2000)))
    dom = dump_dom(chromium, profile, page.as_uri() + "#filter=kind")
    rows = re.findall(r'<tr class="(row [^"]*)"', dom)
    assert len(rows) == 2000
    kind = len([r for r in rows if "hidden" not in r])
    assert kind == sum(1 for i in range(2000) if i % 25 == 7) and f'data-shown="{kind}"' in dom


# -- interactive: typing in the filter box and clicking a cell, through chromedriver ----------

class WebDriver:
    """The few W3C WebDriver commands the test needs, over loopback HTTP to chromedriver."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, base: str, session: str):
        self.base, self.session = base, session

    @staticmethod
    def call(base: str, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["value"]

    def __call__(self, method: str, path: str, body=None):
        return self.call(self.base, method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        found = self("POST", "/element", {"using": "css selector", "value": css})
        assert self.ELEMENT in found, found
        return found[self.ELEMENT]

    def script(self, source: str, *args):
        return self("POST", "/execute/sync", {"script": source, "args": list(args)})


@pytest.fixture
def webdriver(chromium, profile):
    driver = shutil.which("chromedriver")
    require(driver is not None, "chromedriver is not installed (apt-get install -y chromium-driver)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([driver, f"--port={port}", "--allowed-ips=127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    session = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                WebDriver.call(base, "GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}}}}
        session = WebDriver.call(base, "POST", "/session", caps)["sessionId"]
        yield WebDriver(base, session)
    finally:
        if session is not None:
            try:
                WebDriver.call(base, "DELETE", f"/session/{session}")
            except (urllib.error.URLError, ConnectionError):
                pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:  # a browser chromedriver left behind shares its process group
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def test_typing_in_the_filter_and_clicking_a_cell(webdriver, tmp_path):
    report = synthetic_report(100)
    page = tmp_path / "report.html"
    write_text_atomic(page, render_html(report))
    webdriver("POST", "/url", {"url": page.as_uri()})
    count_visible = "return document.querySelectorAll('#matrix tbody tr.row:not(.hidden)').length"
    assert webdriver.script(count_visible) == 100

    box = webdriver.find("#filter")
    webdriver("POST", f"/element/{box}/value", {"text": "test_case_0013"})
    assert webdriver.script(count_visible) == 1
    assert webdriver.script("return document.getElementById('shown').textContent") == "1 of 100 tests shown"
    webdriver("POST", f"/element/{box}/clear", {})
    webdriver("POST", f"/element/{box}/value", {"text": " "})  # clear fires no input event
    assert webdriver.script(count_visible) == 100

    only = webdriver.find("#only-divergent")
    webdriver("POST", f"/element/{only}/click", {})
    assert webdriver.script(count_visible) == report["summary"]["divergent"]

    cell = webdriver.find("#matrix tbody tr.row td.cell.failed")
    webdriver("POST", f"/element/{cell}/click", {})
    detail = webdriver.script("var d = document.getElementById('detail');"
                              "return [d.className, d.textContent, getComputedStyle(d).display];")
    assert detail[0] == "open" and detail[2] == "block"
    assert "failed" in detail[1] and "test_case_" in detail[1]
    shot = base64.b64decode(webdriver("GET", "/screenshot"))
    (tmp_path / "clicked.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
