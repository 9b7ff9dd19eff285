"""The roof: the composition root that starts jobsight's components.

The ``jobsight`` command (:mod:`launch.cli`), ``jobsight agent`` (every exporter of a node in one
process), ``jobsight up`` (the whole stack on one machine), its demo and its process supervisor.
Only this package imports the components (exporters, collectors, schedulers, API, dashboards),
and nothing imports it: the kernel ``jobsight/`` stays the ground floor every component stands on.
"""
