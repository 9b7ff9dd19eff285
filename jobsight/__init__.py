"""jobsight: job-centric observability for GPU training clusters.

This package is the shared kernel, the ground floor every component stands on: errors, config
loading, job identity, trust rules, the serving and exposition helpers every exporter uses, the
log store, the XID table, the Grafana client and ``jobsight.training`` (the public API for training
scripts). It imports no component. The composition root that starts components (the ``jobsight``
command, ``jobsight agent``, ``jobsight up``) is the ``launch`` package.
"""

__version__ = "0.1.0"
