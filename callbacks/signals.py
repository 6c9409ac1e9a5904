"""Stop on SIGTERM / SIGUSR1 at the next step boundary with last.ckpt written for that step.

Lightning already turns SIGTERM into a `SIGTERMException` raised between two training steps; this
callback writes `last.ckpt` when that happens, so `resume=auto` continues from the step that was
interrupted.

With more than one rank Lightning's own handler is not safe: it calls `dist.broadcast(src=0)` from
inside the signal handler, and a signalled rank stops at its next step on its own. When the signal
reaches a rank other than 0 only (one pre-empted node of a multi-node job), the collectives of the
ranks fall out of step and the run aborts with no checkpoint. So during training this callback swaps
in a handler that only notes the signal; at each step boundary the ranks all-reduce "any rank
signalled?" and, when so, all stop after that same step and write one `last.ckpt` together.

SIGUSR1 is what SLURM sends before pre-emption or the time limit (`#SBATCH --signal=SIGUSR1@90`).
Under SLURM with auto-requeue Lightning owns it (checkpoint `hpc_ckpt_N.ckpt` + `scontrol requeue`)
and this callback leaves it alone; anywhere else SIGUSR1 is treated exactly like SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.checkpointing import LastCheckpoint

log = logging.getLogger(__name__)

# The exit status of a run stopped by a signal after its checkpoint was written: the shell's
# "terminated by SIGTERM" (128 + 15), so schedulers and torchrun see an unfinished run.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM


def cluster_environment(trainer: L.Trainer) -> object:
    # The environment Lightning's own signal handling looks at (single-device strategies have none).
    return trainer._accelerator_connector.cluster_environment


def lightning_handles_sigusr1(trainer: L.Trainer) -> bool:
    env = cluster_environment(trainer)
    return isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1


class CheckpointOnSignal(L.Callback):
    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self._previous_sigusr1: signal.Handlers | None = None
        self._previous_sigterm: signal.Handlers | None = None
        self._signalled = False  # this rank got SIGTERM; acted on once the ranks agree at a step boundary

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not lightning_handles_sigusr1(trainer):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, _forward_as_sigterm)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its SIGTERM handler after on_fit_start, so it is replaced here.
        if trainer.world_size > 1:
            self._signalled = False
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._note_signal)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        # One tiny all-reduce per step, like the broadcast Lightning already does per step.
        if self._previous_sigterm is not None and trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            # Set on every rank at once, so every rank raises SIGTERMException at the end of this same step.
            trainer._signal_connector.received_sigterm = True

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        # No collective here: a handler runs between any two bytecodes, possibly in the middle of another one.
        log.warning("process %d received signal %d; all ranks stop at the next step boundary", os.getpid(), signum)
        self._signalled = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.last.save_now(trainer)  # every rank: saving includes a barrier
        if trainer.is_global_zero and path is not None:
            log.warning("stopped by a signal at step %d; saved %s (continue with resume=auto)",
                        trainer.global_step, path)
        elif trainer.is_global_zero:
            log.warning("stopped by a signal at step %d; no checkpoint of this step (see above); resume=auto "
                        "continues from the previous one", trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None


def _forward_as_sigterm(signum: int, frame: FrameType | None) -> None:
    # Re-raising as SIGTERM reuses the SIGTERM path: every rank stops at the same step boundary.
    os.kill(os.getpid(), signal.SIGTERM)
