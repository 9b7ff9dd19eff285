"""Prometheus alerting rules (``rules/*.yaml``), their promtool unit tests (``tests/*.yaml``) and the
Alertmanager configuration template, with :mod:`alerts.config` to list and render them."""
