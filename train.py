"""tracklight entry point: fit / validate / test / predict from one composed config.

    python train.py                                           # synthetic data, CPU is fine
    python train.py experiment=cotracker3_kubric trainer.devices=8 data.train_shards=/data/kubric
    python train.py validate experiment=cotracker3_tapvid_davis model.init_from=scaled_offline.pth

The same command runs under `torchrun` and `srun` (trainer.devices / trainer.num_nodes = auto take
the launcher's layout) and under a W&B sweep agent (overrides come from argv on every rank).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpointing import AtomicCheckpointIO, LastCheckpoint, TrustedWeightsCheckpoint
from callbacks.console import ResultsTable, format_results, quiet_evaluation, quiet_uninformative_output
from callbacks.data_health import DataHealthLogger
from callbacks.fsdp import TracklightFSDPStrategy
from callbacks.prediction_writer import NpzPredictionWriter
from callbacks.run_directory import RunLock, check_writable, newest_checkpoint, refuse_fresh_run_over_checkpoints
from callbacks.run_metadata import (
    IncompatibleCheckpointError,
    RunMetadata,
    check_checkpoint_matches_model,
    check_resume_compatible,
)
from callbacks.signals import INTERRUPTED_EXIT_CODE, CheckpointOnSignal
from callbacks.startup_report import StartupReport
from callbacks.throughput import MetricsProgressBar, ThroughputMonitor
from configs import loader
from configs.loader import ConfigError, compose, parse_command_line
from configs.usage import usage_text
from datamodules.errors import DataFormatError
from datamodules.registry import DataKind, load_data_kinds
from lightning_modules.registry import Family, load_families
from models.checkpoint_io import CheckpointMismatchError, CheckpointReadError, load_checkpoint_file

log = logging.getLogger("tracklight")


def registries() -> tuple[dict[str, Family], dict[str, DataKind]]:
    """The registered model families and data kinds (imports their modules)."""
    return load_families(), load_data_kinds()


def section_classes() -> dict[str, dict[str, type]]:
    """`families=` / `data_kinds=` for configs.loader: each name's section dataclass."""
    families, kinds = registries()
    return {"families": {name: f.config for name, f in families.items()},
            "data_kinds": {name: k.config for name, k in kinds.items()}}


def load_config(argv: list[str], config_dir: Path = loader.CONFIG_DIR) -> tuple[str, DictConfig]:
    """(command, resolved config) of a train.py command line, with every registered family and data kind."""
    return loader.load_config(argv, **section_classes(), config_dir=config_dir)


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def launcher_layout() -> tuple[str, int, int] | None:
    """(launcher, processes per node, nodes) when torchrun or srun started this process, else None.

    Same precedence as Lightning's environment detection: torchrun (also inside a SLURM job) first.
    """
    if TorchElasticEnvironment.detect():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return "torchrun", per_node, int(os.environ["WORLD_SIZE"]) // per_node
    if SLURMEnvironment.detect():
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        tasks = int(per_node.split("(")[0]) if per_node else int(os.environ["SLURM_NTASKS"]) // nodes
        return "srun", tasks, nodes
    return None


def resolve_layout(cfg: DictConfig) -> tuple[Any, int]:
    """(devices, num_nodes) for the Trainer; under a launcher they must match the processes it started."""
    devices, num_nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    launched = launcher_layout()
    if launched is None:
        return devices, 1 if num_nodes == "auto" else int(num_nodes)
    name, per_node, nodes = launched
    devices = per_node if devices == "auto" else devices
    num_nodes = nodes if num_nodes == "auto" else int(num_nodes)
    count = devices if isinstance(devices, int) else len(devices)
    if (count, num_nodes) != (per_node, nodes):
        raise ConfigError(
            f"{name} started {per_node} process(es) per node on {nodes} node(s), but trainer.devices={devices} "
            f"trainer.num_nodes={num_nodes}; pass trainer.devices={per_node} trainer.num_nodes={nodes} "
            f"(or trainer.devices=auto trainer.num_nodes=auto)")
    return devices, num_nodes


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"trainer.fsdp.wrap: cannot import {path!r} (expected module.Class)") from None


def fsdp_strategy(cfg: DictConfig) -> FSDPStrategy:
    f = cfg.trainer.fsdp
    blocks = {_import_class(path) for path in f.wrap}
    # Full state dicts keep checkpoints single files (atomic writes, resume=auto, model.init_from).
    return TracklightFSDPStrategy(
        resolve_precision(cfg.trainer.precision), auto_wrap_policy=blocks, sharding_strategy=f.sharding,
        state_dict_type="full", activation_checkpointing_policy=blocks if f.activation_checkpointing else None)


def resolve_strategy(cfg: DictConfig, devices: Any, num_nodes: int) -> str | Strategy:
    strategy = cfg.trainer.strategy
    if strategy == "fsdp":
        return fsdp_strategy(cfg)
    if strategy != "auto":
        return strategy
    many = (isinstance(devices, int) and devices > 1) or (not isinstance(devices, (int, str)) and len(devices) > 1)
    many = many or devices == "auto" and torch.cuda.device_count() > 1
    return "ddp" if many or num_nodes > 1 else "auto"


def _wandb_mode(cfg: DictConfig) -> str:
    """Explicit setting, else WANDB_MODE, else online only when an API key is configured."""
    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]  # wandb rejects an empty mode; treat it as unset
    if cfg.wandb.mode:
        return cfg.wandb.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def _stable_run_id(run_dir: Path) -> str:
    """Same W&B run across restarts of the same run_dir (resume=auto continues its curves).

    A sweep agent chooses the run's id itself (WANDB_RUN_ID): use it, or the sweep loses the run.
    """
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    id_file = run_dir / "wandb_run_id.txt"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    return run_id


def build_logger(cfg: DictConfig, evaluation: Evaluation | None = None) -> Logger | bool:
    run_dir = Path(cfg.run_dir)
    if cfg.logger == "none":
        return False
    if cfg.logger == "csv":
        return CSVLogger(save_dir=run_dir, name="logs")
    if cfg.logger == "tensorboard":
        return TensorBoardLogger(save_dir=run_dir, name="tensorboard")
    if cfg.logger != "wandb":
        raise ConfigError(f"logger={cfg.logger!r}; choose wandb, csv, tensorboard or none")
    mode = _wandb_mode(cfg)
    import wandb

    settings = wandb.Settings(init_timeout=60, silent=True)
    kwargs = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.name, group=cfg.wandb.group,
                  tags=list(cfg.wandb.tags), save_dir=str(run_dir), settings=settings, log_model=False)
    kwargs |= evaluation.wandb_run(cfg) if evaluation else dict(id=_stable_run_id(run_dir), resume="allow")
    logger = _wandb_logger(mode, kwargs)
    if mode == "online" and rank_zero_only.rank == 0:
        try:
            _ = logger.experiment  # fail fast here rather than mid-run
        except Exception as err:  # network or auth problems must never stop training
            log.warning("W&B online init failed (%s); logging offline instead, sync later with `wandb sync`", err)
            logger = _wandb_logger("offline", kwargs)
    return logger


def _wandb_logger(mode: str, kwargs: dict[str, Any]) -> WandbLogger:
    logger = WandbLogger(mode=mode, **kwargs)
    # Lightning always passes `anonymous` to wandb.init, which then warns on every run that the
    # setting does nothing; leaving it out changes nothing else.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    # last.ckpt at a fixed step cadence bounds the work lost when a run is killed.
    last = LastCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=cfg.checkpoint.every_n_steps)
    callbacks: list[Callback] = [last, CheckpointOnSignal(last), RunMetadata(cfg), StartupReport(cfg),
                                 DataHealthLogger()]
    if cfg.checkpoint.monitor:
        callbacks.append(TrustedWeightsCheckpoint(
            dirpath=ckpt_dir, monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
            save_top_k=cfg.checkpoint.save_top_k, auto_insert_metric_name=False,
            filename="step{step:07d}-" + cfg.checkpoint.monitor.replace("/", "_") + "{" + cfg.checkpoint.monitor + ":.4f}",
        ))
    if cfg.logger != "none":  # samples/points/s, MFU on GPUs, learning rates, gradient norm
        callbacks.append(ThroughputMonitor(window=cfg.trainer.log_every_n_steps))
    if cfg.trainer.enable_progress_bar:  # Lightning refuses a bar callback when the bar is off
        callbacks.append(MetricsProgressBar(keys=[cfg.checkpoint.monitor, "perf/samples_per_s"]))
    callbacks.append(ResultsTable(f"validation ({cfg.name})"))
    return callbacks  # the family's own callbacks come from its configure_callbacks()


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return load_data_kinds()[cfg.data.kind].factory(cfg)


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The family's module from its model section; the whole run config is its saved hyper-parameters."""
    try:
        module = load_families()[cfg.model.family].module(cfg.model)
    except (FileNotFoundError, CheckpointMismatchError) as err:  # weights named by model.* keys (init_from, ...)
        raise ConfigError(f"model weights: {err}") from None
    module.save_hyperparameters(OmegaConf.to_container(cfg, resolve=True))
    if cfg.trainer.channels_last:  # before compile, so the compiled graph sees channels-last weights
        from models.memory_format import to_channels_last
        to_channels_last(module.model)
    if cfg.trainer.compile:
        module.model.compile()
    return module


def build_plugins(cfg: DictConfig) -> list[object]:
    plugins: list[object] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=cfg.trainer.slurm_auto_requeue, requeue_signal=signal.SIGUSR1))
    return plugins


def resolve_max_time(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value):
        raise ConfigError(f"trainer.max_time={value!r}: expected DD:HH:MM:SS, e.g. 00:04:00:00 for four hours")
    return value


def build_trainer(cfg: DictConfig, evaluation: Evaluation | None = None) -> L.Trainer:
    t = cfg.trainer
    devices, num_nodes = resolve_layout(cfg)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
        strategy=resolve_strategy(cfg, devices, num_nodes), plugins=build_plugins(cfg),
        precision=resolve_precision(t.precision), max_steps=t.max_steps, max_time=resolve_max_time(t.max_time),
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        logger=build_logger(cfg, evaluation), callbacks=build_callbacks(cfg), default_root_dir=cfg.run_dir,
    )
    if evaluation is not None and evaluation.loops is not None:
        # The checkpoint's step for media file names and logged steps (Lightning restores only weights here).
        trainer.fit_loop.load_state_dict(evaluation.loops)
    return trainer


def resume_path(cfg: DictConfig) -> str | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        newest = newest_checkpoint(Path(cfg.run_dir))
        if newest is not None:
            log.info("resume=auto: continuing from %s", newest)
            return str(newest)
        log.info("resume=auto: no checkpoint in %s yet, starting fresh", cfg.run_dir)
        return None
    if not Path(cfg.resume).is_file():
        raise ConfigError(f"resume={cfg.resume!r}: no such checkpoint file")
    return cfg.resume


def prepare_run_dir(cfg: DictConfig, command: str) -> None:
    """Start-up checks of run_dir; a fit refuses an earlier run's directory unless resuming, and takes its lock."""
    if "://" in cfg.run_dir:  # object storage: no directory to check or lock
        return
    run_dir = Path(cfg.run_dir)
    check_writable(run_dir)
    if command != "fit":
        return
    if cfg.resume is None:
        refuse_fresh_run_over_checkpoints(run_dir)
    if rank_zero_only.rank == 0:  # the process that writes the directory; the lock outlives this call
        RunLock(run_dir).acquire()


@rank_zero_only
def save_resolved_config(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(run_dir / "config.yaml")


@rank_zero_only
def print_results(results: list[dict[str, float]], title: str, module: L.LightningModule, stage: str) -> None:
    for i, metrics in enumerate(results):
        print(format_results(metrics, module, f"{title} (dataloader {i})" if len(results) > 1 else title, stage))


@rank_zero_only
def print_table(table: str | None) -> None:
    print(f"\n{table}" if table else "\n(no evaluation table: nothing was evaluated)")


def place_sweep_run(cfg: DictConfig) -> None:
    """Under a W&B sweep agent each run gets its own directory (the agent's run id), the same on every rank."""
    sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run_id:
        cfg.run_dir = str(Path(cfg.run_dir) / run_id)
        cfg.name = f"{cfg.name}-{run_id}"


class Evaluation:
    """validate / test / predict of a checkpoint: its outputs go to `<run_dir>/eval/<stage>-step<N>/`
    (N: the checkpoint's global step) so that the training run's files are never touched, and W&B
    gets a separate run (job_type "eval", grouped with the training run)."""

    def __init__(self, cfg: DictConfig, stage: str) -> None:
        self.stage, self.train_dir, self.loops, self.step = stage, Path(cfg.run_dir), None, None  # train_dir: read only
        if cfg.ckpt is not None:
            if not Path(cfg.ckpt).is_file():
                raise ConfigError(f"ckpt={cfg.ckpt!r}: no such checkpoint file")
            try:
                checkpoint = load_checkpoint_file(cfg.ckpt, mmap=True)
            except CheckpointReadError as err:
                raise ConfigError(f"ckpt={cfg.ckpt!r}: {err}") from None
            if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
                raise ConfigError(f"ckpt={cfg.ckpt!r}: not a Lightning checkpoint of this framework (no global_step); "
                                  "official weight files go to model.init_from")
            self.step, self.loops = int(checkpoint["global_step"]), checkpoint.get("loops", {}).get("fit_loop")
        # Without a checkpoint the weights are what the config builds (model.init_from or random).
        self.name = f"{stage}-step{self.step}" if self.step is not None else f"{stage}-init"
        self.out_dir = self.train_dir / "eval" / self.name

    def wandb_run(self, cfg: DictConfig) -> dict[str, Any]:
        """W&B arguments: a fresh run of its own (never the training run's id), linked by group and config."""
        id_file = self.train_dir / "wandb_run_id.txt"
        trained_in = id_file.read_text().strip() if id_file.is_file() else None
        return dict(id=secrets.token_hex(4), resume=None, name=f"{cfg.name}-{self.name}", job_type="eval",
                    group=cfg.wandb.group or cfg.name,
                    config={"eval": {"stage": self.stage, "ckpt": cfg.ckpt, "step": self.step,
                                     "training_run_id": trained_in}})


def print_config(cfg: DictConfig) -> DictConfig:
    """The composed config as YAML on stdout; nothing is built."""
    print(OmegaConf.to_yaml(cfg), end="")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        log.warning("not set yet (shown as ???): %s", ", ".join(missing))
    return cfg


def run(argv: list[str]) -> object:
    cli = parse_command_line(argv)
    if cli.command == "help":
        print(usage_text(**section_classes()))
        return None
    command = cli.command
    cfg = compose(cli, **section_classes(), require_complete=command != "print_config")
    if command == "print_config":
        return print_config(cfg)
    place_sweep_run(cfg)
    evaluation = Evaluation(cfg, command) if command != "fit" else None
    if evaluation is not None:
        cfg.run_dir = str(evaluation.out_dir)  # config.yaml, media, logs and predictions of this evaluation
    prepare_run_dir(cfg, command)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    datamodule = build_datamodule(cfg)  # first: a bad data config fails before any weights load
    module = build_module(cfg)
    trainer = build_trainer(cfg, evaluation)
    save_resolved_config(cfg)
    if command == "fit":
        ckpt_path = resume_path(cfg)
        if ckpt_path is not None:
            check_resume_compatible(cfg, module, ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer
    if cfg.ckpt is not None:
        check_checkpoint_matches_model(module, cfg.ckpt)
    if command == "predict":
        out_dir = Path(cfg.run_dir) / "predictions"
        trainer.callbacks.append(NpzPredictionWriter(out_dir))
        with quiet_evaluation():
            trainer.predict(module, datamodule=datamodule, ckpt_path=cfg.ckpt, return_predictions=False)
        log.info("predictions written to %s", out_dir)
        return out_dir
    evaluate = trainer.validate if command == "validate" else trainer.test
    with quiet_evaluation():
        results = evaluate(module, datamodule=datamodule, ckpt_path=cfg.ckpt, verbose=False)
    own_table = getattr(module, "results_table", None)  # an evaluation with one table of its own (depth benchmarks)
    if own_table is not None:
        print_table(own_table())
    else:
        print_results(results, f"{command} results ({cfg.name}, {evaluation.name}; written to {cfg.run_dir})", module,
                      "val" if command == "validate" else "test")
    return results


def worker_error_message(err: BaseException) -> str:
    """The error's own message, without the traceback DataLoader adds to errors raised in its workers."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return str(err)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_uninformative_output()
    try:
        run(sys.argv[1:])
    except (ConfigError, IncompatibleCheckpointError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except DataFormatError as err:  # e.g. shards of another schema: the user points the run at other data
        print(f"data error: {worker_error_message(err)}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # last.ckpt is written (callbacks/signals.py); the run is not finished
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
