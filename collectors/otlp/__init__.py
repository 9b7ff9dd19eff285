"""The agent's OTLP/HTTP metrics receiver: training steps reported by ``jobsight.training``.

- :mod:`collectors.otlp.decode` turns a request body (protobuf or JSON, gzip or not) into
  OpenTelemetry's own ``ExportMetricsServiceRequest`` message (the ``opentelemetry-proto``
  package; nothing is hand-parsed);
- :mod:`collectors.otlp.store` keeps the latest values per job and rank, bounded: label values
  validated, a cap on jobs and on series per job (with counters of what was dropped), ranks that
  stop exporting expire;
- :mod:`collectors.otlp.collector` publishes them as ``jobsight_train_*`` families on ``/metrics``;
- :mod:`collectors.otlp.server` answers ``POST /v1/metrics`` on its own port (4318, OTLP's);
- :mod:`collectors.otlp.cli` is what ``jobsight agent`` calls to add it.
"""
