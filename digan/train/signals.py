"""Stopping `digan train` cleanly: SIGINT/SIGTERM finish the step in flight, then the loop writes a
snapshot and raises TrainingInterrupted; plus the deterministic kill point used by tests."""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

# Test hook, read when train() starts: "<step>[:TERM|INT]" makes rank 0 send itself that signal
# right after step <step>, a kill point that does not depend on timing.
SELF_SIGNAL_ENV = "DIGAN_TRAIN_SELF_SIGNAL"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM.  `snapshot` is the snapshot of the last finished step (None
    when aborted by a second signal, or when there is no output folder); `signum` the signal."""

    def __init__(self, signum: int, step: int, cur_nimg: int, snapshot: Optional[Path]):
        super().__init__(signum, step, snapshot)
        self.signum, self.step, self.cur_nimg, self.snapshot = int(signum), step, cur_nimg, snapshot


class StopSignals:
    """While active (main thread only): the first SIGINT or SIGTERM records its number, and the loop
    stops after the step in flight (a half-done step cannot be snapshotted and resumed exactly); a
    second one aborts at once, without a snapshot.  The notice goes to stderr at once: the step in
    flight can take a while on a CPU."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(signum, -1, -1, None)
        self.signum = signum
        name = signal.Signals(signum).name
        sys.stderr.write(f"\n{name}: stopping after the current step and writing a snapshot "
                         f"(send it again to abort without one)\n")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def self_signal_plan() -> Optional[Tuple[int, int]]:
    spec = os.environ.get(SELF_SIGNAL_ENV, "").strip()
    if not spec:
        return None
    step, _, name = spec.partition(":")
    sig = getattr(signal, "SIG" + (name or "TERM").strip().upper(), None)
    if not step.strip().isdigit() or sig not in (signal.SIGINT, signal.SIGTERM):
        raise ValueError(f"{SELF_SIGNAL_ENV}={spec!r}: expected <step>[:TERM|INT]")
    return int(step), sig


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C reaches the whole process group; workers must keep serving
    the main process, which decides when to stop (they exit with it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
