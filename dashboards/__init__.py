"""Grafana dashboards generated with grafana-foundation-sdk (``boards/``), committed as JSON
(``json/``), with the query lister, the Grafana push and job annotations."""
