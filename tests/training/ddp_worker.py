"""One rank of a tiny DistributedDataParallel job on the CPU (gloo), reporting through
jobsight.training; run by torchrun from tests/training/test_distributed.py.

Every step: a "compute" phase (forward and loss, plus ``--compute-seconds`` of pretend work), a
"sync" phase (backward, where DDP all-reduces the gradients and so waits for every rank), then
``optimizer.step()``, which steps the tracker through ``Tracker.watch_optimizer``.

``--slow-rank R --slow-seconds S``: rank R works S seconds longer in compute every step.
``--hang-rank R --hang-after N``: at step N, rank R stops inside compute for good (a rank stuck
before a collective); the others wait in the all-reduce.
Runs until ``--stop-file`` exists (or ``--max-seconds``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import jobsight.training


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--compute-seconds", type=float, default=0.01)
    parser.add_argument("--slow-rank", type=int, default=-1)
    parser.add_argument("--slow-seconds", type=float, default=0.0)
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--hang-after", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()

    torch.set_num_threads(1)  # four ranks share two cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = DistributedDataParallel(nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # Job id, rank, local rank and world size from the environment torchrun and the test set;
    # the endpoint from OTEL_EXPORTER_OTLP_ENDPOINT.
    tracker = jobsight.training.start(export_interval_s=0.5)
    tracker.watch_optimizer(optimizer, samples_per_step=8)
    stop = Path(args.stop_file)
    deadline = time.monotonic() + args.max_seconds
    step = 0
    while not stop.exists() and time.monotonic() < deadline:
        x, y = torch.randn(8, 16), torch.randn(8, 1)
        with tracker.phase("compute"):
            loss = nn.functional.mse_loss(model(x), y)
            time.sleep(args.compute_seconds)
            if rank == args.slow_rank:
                time.sleep(args.slow_seconds)
            if rank == args.hang_rank and step >= args.hang_after:
                while not stop.exists():
                    time.sleep(0.1)
                break
        with tracker.phase("sync"):
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
        step += 1
    tracker.close()
    # After a hang the peers of the stuck rank stay inside their all-reduce until the test ends
    # them; otherwise every rank gets here and leaves the group.
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
