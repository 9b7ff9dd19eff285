"""Tests of the Kubernetes integration."""
