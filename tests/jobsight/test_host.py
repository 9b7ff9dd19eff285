"""The node's host key: one setting shared by the agent, the collector and the Slurm hook."""

from __future__ import annotations

from jobsight.host import host_key


def test_host_key_order_and_short_default() -> None:
    assert host_key("gpu-node1", {"JOBSIGHT_HOSTNAME": "x", "NODE_NAME": "y"}) == "gpu-node1"
    assert host_key(None, {"JOBSIGHT_HOSTNAME": "x", "NODE_NAME": "y"}) == "x"
    assert host_key(None, {"NODE_NAME": "y"}) == "y"
    # An FQDN from the resolver becomes the short name Slurm's NodeName uses.
    assert host_key(None, {}, hostname="gpu-node7.cluster.example.org") == "gpu-node7"
    assert host_key(None, {}, hostname="gpu-node7") == "gpu-node7"
