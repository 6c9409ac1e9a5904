"""DataLoader worker set-up shared by every DataModule: workers survive a stop signal, never the run.

What schedulers send to stop a run (SLURM scancel / pre-emption / time limit, `timeout`,
`kill -- -PGID`) reaches every process of the job, DataLoader workers included. A worker killed by
it makes the DataLoader raise "worker ... is killed by signal" in the training process at its next
fetch, before the step boundary where the run writes its checkpoint (callbacks/signals.py). So
workers ignore stop signals, and the training process ends them itself:

- normally, the DataLoader shuts its workers down when its iterator is released;
- on every other exit (an error raised in the training loop, a signal during validation, ...) the
  iterator is still referenced by the traceback when the interpreter exits, and multiprocessing's
  exit handler would `terminate()` (SIGTERM: ignored) and then `join()` the workers without a
  timeout: the process would never exit. `kill_leftover_workers` runs first, at exit, and kills them.
- if the training process itself is killed, each worker notices its parent is gone within seconds
  (the DataLoader's watchdog) and exits.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours: ours runs first
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_JOIN_TIMEOUT_S = 10.0
_exit_hook_registered = False


def ignore_stop_signals(worker_id: int) -> None:
    """In a worker: leave stop signals to the training process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def kill_leftover_workers() -> list[int]:
    """Kill the daemonic child processes (DataLoader workers) still alive; return their pids.

    Daemonic children die with their parent by definition; this does what multiprocessing's own
    exit handler means to do, with SIGKILL because the workers ignore SIGTERM.
    """
    children = [p for p in multiprocessing.active_children() if p.daemon]
    if not children:
        return []
    # torch's SIGCHLD handler reports a killed worker of a still-referenced iterator as an error.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in children:
        process.kill()
    for process in children:
        process.join(_JOIN_TIMEOUT_S)
    return [p.pid for p in children]


def stop_signal_safe_worker_init() -> Callable[[int], None]:
    """The `worker_init_fn` for a DataLoader; call it in the training process, where it arranges
    for the workers to be killed at exit."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(kill_leftover_workers)
        _exit_hook_registered = True
    return ignore_stop_signals
