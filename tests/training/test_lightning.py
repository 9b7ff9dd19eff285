"""`jobsight.lightning.JobsightCallback` in a real Lightning fit (CPU, a tiny model), reporting to a
real OTLP receiver: steps, samples, loss, the compute/optimizer/eval phases, and a closed tracker."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from lightning import LightningModule, Trainer
from prometheus_client import CollectorRegistry
from torch.utils.data import DataLoader, TensorDataset

from collectors.otlp.collector import TrainingCollector
from collectors.otlp.server import OtlpReceiver
from collectors.otlp.store import TrainingStore
from jobsight.lightning import JobsightCallback
from jobsight.serving import ListenAddress


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(rows: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(rows, 4, generator=generator), torch.randn(rows, 1, generator=generator))
    return DataLoader(data, batch_size=8)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver(TrainingStore(), ListenAddress("127.0.0.1", 0)).start()
    yield started
    started.stop()


def test_a_lightning_fit_reports_its_steps_phases_and_loss(receiver: OtlpReceiver) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    callback = JobsightCallback(job_id="lt-1", endpoint=receiver.url, export_interval_s=60.0)
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                      num_sanity_val_steps=0)
    trainer.fit(Tiny(), train_dataloaders=_loader(40), val_dataloaders=_loader(16))
    # teardown closed the tracker, which exported what it had: 2 epochs x 5 batches of 8.
    assert callback.tracker is None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainingCollector(receiver.store, "node-a", receiver.request_counts))
    rank = {"job_id": "lt-1", "rank": "0", "Hostname": "node-a"}
    assert registry.get_sample_value("jobsight_train_steps_total", rank) == 10
    assert registry.get_sample_value("jobsight_train_samples_total", rank) == 80
    loss = registry.get_sample_value("jobsight_train_loss", rank)
    assert loss is not None and loss > 0
    for phase, count in (("compute", 10), ("optimizer", 10), ("eval", 2)):  # eval: once per epoch
        timed = registry.get_sample_value("jobsight_train_phase_seconds_count", {**rank, "phase": phase})
        assert timed == count, phase
