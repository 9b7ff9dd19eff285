"""A client of the kubelet's pod-resources API: which devices the kubelet handed to which container.

``v1.PodResourcesLister/List`` on ``/var/lib/kubelet/pod-resources/kubelet.sock``, as dcgm-exporter
reads it. It names GPUs a device plugin allocated even before a process runs on them, and it is the
kubelet's own record, which a pod cannot forge (DESIGN.md "Trust").

The messages are generated from ``proto/podresources.proto`` (jobsight's own minimal copy of the
kubelet's field numbers); the method is called through grpc's generic channel API, so no generated
service code (which pins a grpcio version) is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobsight.errors import DependencyUnavailable

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
LIST_METHOD = "/v1.PodResourcesLister/List"
# The resources dcgm-exporter counts as GPUs: whole GPUs and MIG slices under the mixed strategy.
DEFAULT_GPU_RESOURCES: tuple[str, ...] = ("nvidia.com/gpu",)
GPU_RESOURCE_PREFIXES: tuple[str, ...] = ("nvidia.com/mig-",)
# A response lists every pod on the node; thousands of pods with their devices stay far below this.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DeviceAssignment:
    """One device the kubelet allocated to one container."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_id: str  # a GPU UUID (``GPU-…``), a MIG UUID, or whatever the device plugin reports


def is_gpu_resource(resource: str, names: Sequence[str] = DEFAULT_GPU_RESOURCES) -> bool:
    return resource in names or resource.startswith(GPU_RESOURCE_PREFIXES)


class PodResourcesClient:
    """Calls ``List`` over the kubelet's unix socket; one channel, reused.

    A kubelet restart replaces the socket file: the channel reconnects by path, which is why the
    chart mounts the directory, not the socket (the Kubernetes docs' advice).
    """

    def __init__(self, socket_path: Path | str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._channel: Any = None
        self._call: Any = None

    def _callable(self) -> Any:
        if self._call is None:
            import grpc

            from schedulers.kubernetes.proto import podresources_pb2 as pb

            self._channel = grpc.insecure_channel(
                f"unix://{self.socket_path}",
                options=[("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)],
            )
            self._call = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=pb.ListPodResourcesRequest.SerializeToString,
                response_deserializer=pb.ListPodResourcesResponse.FromString,
            )
        return self._call

    def allocations(self) -> list[DeviceAssignment]:
        """Every device allocated on this node. Raises :class:`DependencyUnavailable` naming the
        socket when the kubelet does not answer."""
        import grpc

        from schedulers.kubernetes.proto import podresources_pb2 as pb

        try:
            response = self._callable()(pb.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            # A failed channel backs off before reconnecting; a new one tries at once, which is
            # what a scrape after a kubelet restart wants.
            self.close()
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise DependencyUnavailable(
                "kubelet pod-resources", f"{self.socket_path}: {getattr(code, 'name', code)}: {details}"
            ) from exc
        found: list[DeviceAssignment] = []
        for pod in response.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    for device_id in devices.device_ids:
                        found.append(DeviceAssignment(pod.namespace, pod.name, container.name,
                                                      devices.resource_name, device_id))
        return found

    def gpus(self, resources: Sequence[str] = DEFAULT_GPU_RESOURCES) -> list[DeviceAssignment]:
        """The GPU (and MIG) allocations only."""
        return [d for d in self.allocations() if is_gpu_resource(d.resource, resources)]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._call = None
