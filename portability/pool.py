"""TargetPool: the lifecycle of a session's targets.

* lazy: a target starts when the first test needing it asks (``acquire``), or earlier in
  the background when the plugin knows which targets the collected tests need (``prefetch``);
* parallel: several targets come up at once on a thread pool;
* once: each target is started once per session (per process under xdist);
* guaranteed teardown: ``close()`` stops every target that started or is starting, on
  every exit path; SIGINT is held off while it runs so a second Ctrl-C cannot leak.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from portability import facts as facts_mod
from portability.errors import PortabilityError, TargetLost, TargetUnavailable
from portability.targets import Spec, Target, target_class

Progress = Callable[[str, str, float], None]  # (target, message, elapsed seconds)


@dataclass
class TargetState:
    """What the session knows about one target; plain data for the reports."""

    name: str
    kind: str
    status: str = "pending"  # pending | starting | ready | unavailable | lost
    error: str | None = None
    facts: facts_mod.Facts | None = None
    ready_s: float | None = None
    target: Target | None = field(default=None, repr=False)


class TargetPool:
    def __init__(
        self,
        specs: Mapping[str, Spec],
        *,
        session: str,
        base_dir: Path,
        keep: bool = False,
        progress: Progress | None = None,
        max_parallel: int = 4,
    ):
        self._specs = dict(specs)
        self.session = session
        self._base_dir = base_dir
        self._keep = keep
        self._progress = progress or (lambda name, message, elapsed: None)
        self._executor = ThreadPoolExecutor(max_workers=max_parallel,
                                            thread_name_prefix="portability-start")
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}
        self.states: dict[str, TargetState] = {
            name: TargetState(name, spec.kind) for name, spec in self._specs.items()
        }
        self._closed = False

    # -- bring-up --------------------------------------------------------------------------

    def prefetch(self, names: Iterable[str]) -> None:
        """Start bringing these targets up in the background (idempotent)."""
        for name in names:
            self._future(name)

    def acquire(self, name: str) -> Target:
        """The started target, waiting for its bring-up. Raises TargetUnavailable/TargetLost."""
        state = self.states[name]
        future = self._future(name)
        future.result()  # exceptions are recorded on the state, not raised here
        if state.status == "lost":
            raise TargetLost(name, state.error or "lost")
        if state.status != "ready":
            raise TargetUnavailable(name, state.error or "did not start")
        return state.target

    def mark_failed(self, name: str) -> None:
        """A test failed on this target (kinds may keep evidence on stop)."""
        target = self.states[name].target
        if target is not None:
            target.failed = True

    def mark_lost(self, name: str, reason: str) -> None:
        state = self.states[name]
        if state.status == "ready":
            state.status, state.error = "lost", reason
            self._progress(name, f"lost: {reason}", 0.0)

    def _future(self, name: str) -> Future:
        with self._lock:
            if self._closed:
                raise TargetUnavailable(name, "the session is shutting down")
            future = self._futures.get(name)
            if future is None:
                future = self._executor.submit(self._bring_up, name)
                self._futures[name] = future
            return future

    def _bring_up(self, name: str) -> None:
        state = self.states[name]
        spec = self._specs[name]
        started = time.monotonic()
        state.status = "starting"
        self._progress(name, "starting", 0.0)
        try:
            target = target_class(spec.kind)(spec, session=self.session, base_dir=self._base_dir)
        except Exception as exc:  # an engine library missing or broken
            state.status, state.error = "unavailable", f"cannot load kind {spec.kind!r}: {exc}"
            self._progress(name, f"unavailable: {state.error}", time.monotonic() - started)
            return
        state.target = target
        target.progress = lambda message: self._progress(name, message, time.monotonic() - started)
        try:
            target.start()
            state.facts = facts_mod.probe(target)
            if spec.copy:
                self._progress(name, "copying files", time.monotonic() - started)
                target.install_copies()
        except PortabilityError as exc:
            state.status, state.error = "unavailable", getattr(exc, "reason", str(exc))
        except Exception as exc:  # noqa: BLE001 — a kind's bug must not kill the session
            state.status = "unavailable"
            state.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        else:
            state.status = "ready"
        state.ready_s = time.monotonic() - started
        if state.status == "ready":
            self._progress(name, "ready", state.ready_s)
        else:
            self._progress(name, f"unavailable: {state.error}", state.ready_s)
            self._stop(state)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every target that started or is starting. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            futures = list(self._futures.items())
        with sigint_held():
            for _name, future in futures:
                future.cancel()
            self._executor.shutdown(wait=True)  # starts in flight finish, then we stop them
            if self._keep:
                return
            stoppers = [threading.Thread(target=self._stop, args=(self.states[name],))
                        for name, _ in futures]
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join()

    def _stop(self, state: TargetState) -> None:
        if state.target is not None:
            try:
                state.target.stop()
            except Exception:  # noqa: BLE001 — stop() must not raise, but be safe on exit
                pass


class sigint_held:
    """Defer Ctrl-C until teardown has finished (only possible on the main thread)."""

    def __enter__(self):
        self._pending = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._defer)
        return self

    def _defer(self, signum, frame):
        self._pending = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            if self._pending:
                raise KeyboardInterrupt
        return False
