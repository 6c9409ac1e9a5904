"""DataLoader worker set-up shared by every DataModule: workers survive a stop signal, never the run.

What schedulers send to stop a run (SLURM scancel / pre-emption / time limit, `timeout`,
`kill -- -PGID`) reaches every process of the job, DataLoader workers included. A worker killed by
it makes the DataLoader raise "worker ... is killed by signal" in the training process at its next
fetch, before the step boundary where the run writes its checkpoint (callbacks/signals.py). So
workers ignore stop signals (blocked from their fork until they ignore them), and the training
process ends them itself:

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
from typing import Any

from torch.utils.data import DataLoader, Dataset

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_JOIN_TIMEOUT_S = 10.0
_exit_hook_registered = False


def ignore_stop_signals(worker_id: int) -> None:
    """In a worker: leave stop signals to the training process (they were blocked since the fork)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal pending since the fork is now dropped


class StopSignalSafeDataLoader(DataLoader):
    """A DataLoader whose workers are started with stop signals blocked.

    A worker runs its `worker_init_fn` some time after the fork; a group signal arriving in between
    (a new epoch or a validation starts new workers) would kill it. Blocked signals stay pending and
    are dropped once the worker ignores them; the training process unblocks its own right after.
    """

    def __iter__(self):  # noqa: ANN204 (the DataLoader's own iterator type)
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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


def stop_signal_safe_loader(dataset: Dataset, **kwargs: Any) -> DataLoader:
    """The DataLoader for every DataModule: its workers ignore stop signals and are killed when the
    training process exits (call it in the training process)."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(kill_leftover_workers)
        _exit_hook_registered = True
    return StopSignalSafeDataLoader(dataset, worker_init_fn=ignore_stop_signals, **kwargs)
