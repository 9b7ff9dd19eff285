"""Slurm: unit tests and tests against a real one-host, two-node Slurm."""
