"""Tests of the scheduler integrations."""
