"""Hugging Face ``Trainer``'s callback for :mod:`jobsight.training`::

    from jobsight.huggingface import JobsightCallback

    trainer = transformers.Trainer(..., callbacks=[JobsightCallback()])

Each process starts its tracker when training begins (job id from the environment, rank from
``TrainingArguments.process_index``), reports a step at every optimizer step with the samples it
took (per-device batch size times gradient accumulation steps), times the phases ``compute`` (from the
step's start to the optimizer step: forward and backward of every micro-batch) and ``optimizer``,
keeps the loss the Trainer logs, and closes the tracker when training ends. Like the tracker, it
never raises into training.

Imports ``transformers``: only a script that uses the Trainer imports this module, and jobsight
does not depend on it.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from jobsight import training

__all__ = ["JobsightCallback"]


class JobsightCallback(TrainerCallback):
    """``tracker``: one already started; else ``start_kwargs`` go to
    :func:`jobsight.training.start` (``job_id``, ``endpoint``, ``export_interval_s``...)."""

    def __init__(self, tracker: training.Tracker | None = None, **start_kwargs: Any) -> None:
        self.tracker = tracker
        self._own = tracker is None
        self._start_kwargs = start_kwargs
        self._step_phase = training.HookPhase()  # compute, then optimizer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is None:
            kwargs_ = {"rank": int(getattr(args, "process_index", 0)), **self._start_kwargs}
            self.tracker = training.start(**kwargs_)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_phase.open(self.tracker, "compute")

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_phase.open(self.tracker, "optimizer")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_phase.close()
        if self.tracker is not None:
            per_step = int(getattr(args, "per_device_train_batch_size", 0) or 0) * int(
                getattr(args, "gradient_accumulation_steps", 1) or 1)
            self.tracker.step(samples=per_step or None)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if self.tracker is not None and isinstance(loss, int | float) and math.isfinite(loss):
            self.tracker.loss = float(loss)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_phase.close()
        if self.tracker is not None and self._own:
            self.tracker.close()
            self.tracker = None
