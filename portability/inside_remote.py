"""The in-target half of inside mode: shipped into a target and run by the target's Python.

Stand-alone on purpose (stdlib + pytest only, Python >= 3.6, no import of ``portability``):
the target has neither the controller's packages nor its Python version.

Two roles in one file:

* ``python _portability_inside.py supervise RUN.json`` — started in the background by the
  controller. Becomes its own session (so one ``kill -- -PID`` stops it, pytest and every
  process a test started), runs pytest as a child and appends the child's exit status to the
  results file. Because the supervisor outlives the child, a crash of the in-target
  interpreter (``os._exit``, a segfault) still ends the results with an ``exit`` line.
* a pytest plugin (``-p _portability_inside``) that appends one JSON line per event to the
  results file as the run progresses — reports serialized with pytest's own
  ``pytest_report_to_serializable``, the format pytest-xdist ships between processes — and
  keeps only the node ids the controller selected.

The controller reads the results file incrementally (``tail -c +OFFSET``) with cheap exec
calls, which works on every kind, including a VM whose only channel is the command agent.
"""

import json
import os
import subprocess
import sys

RESULTS_ENV = "PORTABILITY_INSIDE_RESULTS"
IDS_ENV = "PORTABILITY_INSIDE_IDS"

#: Markers of pytest-portability, registered so ``--strict-markers`` projects collect here too.
MARKERS = (
    "inside: run this test inside each target (pytest-portability)",
    "targets(*names): pytest-portability target selection",
    "skip_on(**facts): pytest-portability",
    "only_on(**facts): pytest-portability",
    "kernel(spec, reason=''): pytest-portability",
    "userland(reason='', **facts): pytest-portability",
)


def _append(path: str, event: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event, default=repr) + "\n")


def supervise(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        os.setsid()
    except OSError:  # already a session leader (started without a shell's `&`)
        pass
    env = dict(os.environ)
    paths = list(spec.get("pythonpath", []))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(spec.get("env", {}))
    results = spec["results"]
    if spec.get("ids_path"):
        with open(spec["ids_path"], "w", encoding="utf-8") as f:
            json.dump(spec["ids"], f)
    _append(results, {"event": "launched", "pid": os.getpid(), "python": sys.version.split()[0]})
    if spec.get("watch_pid"):
        _watch_owner(int(spec["watch_pid"]))
    with open(spec["log"], "ab") as log:
        try:
            proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except OSError as exc:
            _append(results, {"event": "exit", "rc": 127, "error": str(exc)})
            return 127
        rc = proc.wait()
    _append(results, {"event": "exit", "rc": rc})
    return 0


def _watch_owner(pid: int) -> None:
    """Stop this run (its whole session) when the controller process disappears.

    Only for the local kind, where the controller's pid is visible: a controller killed with
    SIGKILL cannot clean up, and a detached run would otherwise go on alone.
    """
    import signal
    import threading
    import time

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(0, signal.SIGKILL)
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True).start()


# -- pytest plugin (runs inside the in-target pytest) --------------------------------------

class _Reporter:
    def __init__(self, config, path: str, wanted):
        self.config = config
        self.wanted = wanted
        # Line-buffered: every event is visible to the controller's next read.
        self.out = open(path, "a", encoding="utf-8", buffering=1)

    def _write(self, event: dict) -> None:
        self.out.write(json.dumps(event, default=repr) + "\n")
        self.out.flush()

    def pytest_collection_modifyitems(self, session, config, items):
        if self.wanted is None:
            return
        keep = [item for item in items if item.nodeid in self.wanted]
        dropped = [item for item in items if item.nodeid not in self.wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep

    def pytest_collection_finish(self, session):
        self._write({"event": "collected", "ids": [item.nodeid for item in session.items]})

    def pytest_collectreport(self, report):
        if report.failed:
            data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
            self._write({"event": "collect", "nodeid": report.nodeid, "data": data})

    def pytest_runtest_logstart(self, nodeid, location):
        self._write({"event": "start", "nodeid": nodeid})

    def pytest_runtest_logreport(self, report):
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._write({"event": "report", "nodeid": report.nodeid, "when": report.when,
                     "data": data})

    def pytest_internalerror(self, excrepr, excinfo):
        self._write({"event": "internalerror", "text": str(excrepr)[-4000:]})

    def pytest_sessionfinish(self, session, exitstatus):
        self._write({"event": "finish", "exitstatus": int(exitstatus)})


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    # Popped: a pytest that a test starts in a subprocess must not report into our file.
    path = os.environ.pop(RESULTS_ENV, None)
    ids_path = os.environ.pop(IDS_ENV, None)
    if not path or config.pluginmanager.has_plugin("portability-inside-reporter"):
        return
    wanted = None
    if ids_path:
        with open(ids_path, encoding="utf-8") as f:
            wanted = set(json.load(f))
    config.pluginmanager.register(_Reporter(config, path, wanted), "portability-inside-reporter")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    sys.stderr.write("usage: _portability_inside.py supervise RUN.json\n")
    sys.exit(2)
