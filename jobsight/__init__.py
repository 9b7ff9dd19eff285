"""jobsight: job-centric observability for GPU training clusters.

This package is the shared kernel: CLI entry point, settings helpers, job identity, the serving
helpers every exporter uses, and the local stack launcher. Components (exporters, collectors, api,
dashboards, alerts) import it; apart from the wiring modules (`cli`, `agent`, `stack`) it imports
no component.
"""

__version__ = "0.1.0"
