"""What a run prints: the results table (after `fit`, and for validate / test) and filters for
library output that tells a user nothing they can act on.

A family names its headline metrics in its LightningModule as `headline_metrics` (a tuple of
HeadlineMetric) and the baseline column's title as `headline_baseline`; the table shows them
first, then every logged metric of the stage.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class HeadlineMetric(NamedTuple):
    label: str
    key: str  # logged as "<stage>/<key>"
    baseline: str | None = None  # the baseline's key, logged the same way
    percent: bool = False  # fractions shown x 100 (as papers and README report them)


def _number(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.4g}"


def format_results(metrics: dict[str, float], module: Any, title: str, stage: str = "val") -> str:
    """The headline table of `module`'s family for `stage` (val / test), then all `metrics` as logged."""
    rows: tuple[HeadlineMetric, ...] = getattr(module, "headline_metrics", ())
    lines = [f"\n{title}"]
    present = [r for r in rows if f"{stage}/{r.key}" in metrics]
    if present:
        with_baseline = any(r.baseline for r in present)
        baseline = getattr(module, "headline_baseline", "baseline") if with_baseline else ""
        width = max(len(r.label) + 4 for r in present)
        lines.append(f"  {'':<{width}}  {'model':>8}  {baseline:>12}".rstrip())
        for r in present:
            label = r.label + (" (%)" if r.percent else "")
            base = metrics.get(f"{stage}/{r.baseline}") if r.baseline else None
            value = _number(metrics[f"{stage}/{r.key}"], r.percent)
            lines.append(f"  {label:<{width}}  {value:>8}  {_number(base, r.percent) if with_baseline else '':>12}".rstrip())
        lines.append("  all metrics:")
    width = max((len(k) for k in metrics), default=0)
    lines += [f"  {key:<{width}}  {value:10.4f}" for key, value in sorted(metrics.items())]
    return "\n".join(lines)


class ResultsTable(L.Callback):
    """After `fit`: the last validation's results table, with the step it ran at (rank 0)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.metrics: dict[str, float] = {}
        self.step = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.step = trainer.global_step

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metrics:
            print(format_results(self.metrics, pl_module, f"{self.title} at step {self.step}"), flush=True)


# (message regex, category, module regex) of warnings every run prints and no user can act on.
UNINFORMATIVE_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Lightning's own pytree helper calls a torch API that torch deprecated; nothing to change on our side.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # Our IterableDatasets split shards per rank and worker and define __len__ per reader.
    (r"Your `IterableDataset` has `__len__` defined", UserWarning, r"lightning\.pytorch\.utilities\.data"),
    # A family returns None only to skip a non-finite step, which lightning_modules/nonfinite.py reports itself.
    (r"`training_step` returned `None`", UserWarning, r"lightning\.pytorch\.loops\.optimization\.automatic"),
)
# (logger, message prefix) of log lines with the same property: advertisements for other products.
UNINFORMATIVE_LOG_LINES: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_uninformative_output() -> None:
    """Install the narrow filters above (message, category and module must all match)."""
    for message, category, module in UNINFORMATIVE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefix in UNINFORMATIVE_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))


@contextmanager
def quiet_evaluation() -> Iterator[None]:
    """validate / test / predict restore the training run's checkpoint callbacks into the evaluation's
    own directory, where they never write: Lightning's notice that their directory changed is moot."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The dirpath has changed from", category=UserWarning,
                                module=r"lightning\.pytorch\.callbacks\.model_checkpoint")
        yield
