"""`jobsight.huggingface.JobsightCallback` in a real Hugging Face `Trainer` run (CPU, a tiny
model), reporting to a real OTLP receiver: steps, samples, the logged loss, the compute and
optimizer phases, and a closed tracker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import Trainer, TrainingArguments

from collectors.otlp.collector import TrainingCollector
from collectors.otlp.server import OtlpReceiver
from collectors.otlp.store import TrainingStore
from jobsight.huggingface import JobsightCallback
from jobsight.serving import ListenAddress


class Tiny(torch.nn.Module):  # type: ignore[misc]  # torch is not followed by mypy (pyproject)
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver(TrainingStore(), ListenAddress("127.0.0.1", 0)).start()
    yield started
    started.stop()


def test_a_trainer_run_reports_its_steps_phases_and_loss(receiver: OtlpReceiver, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(4, generator=generator), "labels": torch.randn(1, generator=generator)}
            for _ in range(64)]
    callback = JobsightCallback(job_id="hf-1", endpoint=receiver.url, export_interval_s=60.0)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, logging_steps=1, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    Trainer(model=Tiny(), args=args, train_dataset=rows, callbacks=[callback]).train()
    assert callback.tracker is None  # closed at the end of training, after a last export
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainingCollector(receiver.store, "node-a", receiver.request_counts))
    rank = {"job_id": "hf-1", "rank": "0", "Hostname": "node-a"}
    assert registry.get_sample_value("jobsight_train_steps_total", rank) == 6
    assert registry.get_sample_value("jobsight_train_samples_total", rank) == 48  # 6 x 4 x 2
    loss = registry.get_sample_value("jobsight_train_loss", rank)
    assert loss is not None and loss > 0
    for phase in ("compute", "optimizer"):
        timed = registry.get_sample_value("jobsight_train_phase_seconds_count", {**rank, "phase": phase})
        assert timed == 6, phase
