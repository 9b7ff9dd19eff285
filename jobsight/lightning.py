"""Lightning's callback for :mod:`jobsight.training`: steps, phases and loss with no change to the
training loop::

    from jobsight.lightning import JobsightCallback

    trainer = lightning.Trainer(callbacks=[JobsightCallback()])

Each rank starts its tracker in ``setup`` (job id from the environment, rank from the trainer),
reports a step at the end of every training batch (with the batch size and the loss the
``training_step`` returned), times the phases ``compute`` (from the batch's start to the optimizer
step: forward and backward) and ``optimizer``, and ``eval`` around validation, and closes the
tracker when fitting ends. Like the tracker, it never raises into training.

Imports Lightning (``lightning.pytorch``, else the older ``pytorch_lightning``): only a script that
uses Lightning imports this module, and jobsight does not depend on either.
"""

from __future__ import annotations

from typing import Any

from jobsight import training

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the pre-2.0 package name
    from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]

__all__ = ["JobsightCallback"]


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor (a tensor, or a tuple, list or dict of
    them), which is what Lightning's own batch-size inference looks at first."""
    first = batch
    if isinstance(batch, dict):
        first = next(iter(batch.values()), None)
    elif isinstance(batch, list | tuple):
        first = batch[0] if batch else None
    shape = getattr(first, "shape", None)
    try:
        return int(shape[0]) if shape is not None and len(shape) > 0 else None
    except (TypeError, ValueError, IndexError):
        return None


def _loss(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return outputs if hasattr(outputs, "detach") else None


class JobsightCallback(Callback):
    """``tracker``: one already started (tests, or a script that reports more itself); else
    ``start_kwargs`` go to :func:`jobsight.training.start` (``job_id``, ``endpoint``,
    ``export_interval_s``...), the rank being the trainer's global rank."""

    def __init__(self, tracker: training.Tracker | None = None, **start_kwargs: Any) -> None:
        super().__init__()
        self.tracker = tracker
        self._own = tracker is None
        self._start_kwargs = start_kwargs
        self._step_phase = training.HookPhase()  # compute, then optimizer
        self._eval = training.HookPhase()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.tracker is None and stage == "fit":
            kwargs = {"rank": int(getattr(trainer, "global_rank", 0)), **self._start_kwargs}
            self.tracker = training.start(**kwargs)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_phase.open(self.tracker, "compute")

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._step_phase.open(self.tracker, "optimizer")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._step_phase.close()
        if self.tracker is not None:
            self.tracker.step(samples=_batch_size(batch), loss=_loss(outputs))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(trainer, "sanity_checking", False):
            self._eval.open(self.tracker, "eval")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.tracker is not None and self._own:
            self.tracker.close()
            self.tracker = None
