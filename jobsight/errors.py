"""jobsight's own exception tree.

Third-party errors (NVML, OS, HTTP clients, SQL drivers) are translated into these once, at the
boundary where they are raised, so callers handle a short, stable set of types.
"""

from __future__ import annotations


class JobsightError(Exception):
    """Base class of every error jobsight raises on purpose."""


class ConfigError(JobsightError):
    """A configuration file, flag or environment value is invalid. The message names what and why."""


class BackendUnavailable(JobsightError):
    """A hardware or library backend (NVML, sysfs root) cannot be used at all on this machine."""


class DeviceLost(JobsightError):
    """One device stopped answering (e.g. NVML GPU_IS_LOST); the others keep being served."""


class FieldNotSupported(JobsightError):
    """A value is not available on this device; the series is left out, never published as 0 or NaN."""


class InvalidInput(JobsightError):
    """A value from a user, a file or the network failed validation at the edge."""


class DependencyUnavailable(JobsightError):
    """A service jobsight talks to (Prometheus, Alertmanager, Elasticsearch, a store) is unreachable.

    `dependency` names it, so an API can answer 503 saying which.
    """

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency
