"""DataLoader worker set-up shared by every DataModule."""

from __future__ import annotations

import signal

# What schedulers send to stop a run: SLURM (scancel, pre-emption, time limit), `timeout` and
# `kill -- -PGID` signal every process of the job, DataLoader workers included.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """`worker_init_fn`: leave stop signals to the training process.

    A worker killed by SIGTERM makes the DataLoader raise "worker ... is killed by signal" in the
    training process at its next fetch, before the step boundary where the run writes its
    checkpoint (callbacks/signals.py). The training process shuts its workers down when it exits.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
