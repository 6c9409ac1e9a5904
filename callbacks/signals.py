"""Stop on SIGTERM / SIGUSR1 at the next step boundary with last.ckpt written for that step.

Lightning already turns SIGTERM into a `SIGTERMException` raised between two training steps
(all ranks agree: rank 0's flag is broadcast every step); this callback writes `last.ckpt` when
that happens, so `resume=auto` continues from the step that was interrupted.

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

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not lightning_handles_sigusr1(trainer):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, _forward_as_sigterm)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.last.save_now(trainer)  # every rank: saving includes a barrier
        if trainer.is_global_zero:
            log.warning("stopped by a signal at step %d; saved %s (continue with resume=auto)",
                        trainer.global_step, path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None


def _forward_as_sigterm(signum: int, frame: FrameType | None) -> None:
    # Re-raising as SIGTERM reuses Lightning's path: other ranks are told, the loop stops at a step boundary.
    os.kill(os.getpid(), signal.SIGTERM)
