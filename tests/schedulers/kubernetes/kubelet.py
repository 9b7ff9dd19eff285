"""A kubelet pod-resources server for the tests: a real gRPC server on a unix socket, speaking
``v1.PodResourcesLister/List`` with jobsight's generated messages (the same wire format as the
kubelet's)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Self

import grpc

from schedulers.kubernetes.proto import podresources_pb2 as pb

# (namespace, pod, container, resource, device ids)
Allocation = tuple[str, str, str, str, Sequence[str]]


class FakeKubelet:
    def __init__(self, socket_path: Path, allocations: Sequence[Allocation] = ()) -> None:
        self.socket_path = socket_path
        self.allocations: list[Allocation] = list(allocations)
        self.calls = 0
        self._lock = threading.Lock()
        self._server: Any = None

    def _list(
        self, request: pb.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pb.ListPodResourcesResponse:
        with self._lock:
            self.calls += 1
            allocations = list(self.allocations)
        pods: dict[tuple[str, str], dict[str, list[pb.ContainerDevices]]] = {}
        for namespace, pod, container, resource, ids in allocations:
            containers = pods.setdefault((namespace, pod), {})
            containers.setdefault(container, []).append(
                pb.ContainerDevices(resource_name=resource, device_ids=ids)
            )
        return pb.ListPodResourcesResponse(
            pod_resources=[
                pb.PodResources(
                    name=pod,
                    namespace=namespace,
                    containers=[
                        pb.ContainerResources(name=c, devices=devices) for c, devices in containers.items()
                    ],
                )
                for (namespace, pod), containers in pods.items()
            ]
        )

    def set(self, allocations: Sequence[Allocation]) -> None:
        with self._lock:
            self.allocations = list(allocations)

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    request_deserializer=pb.ListPodResourcesRequest.FromString,
                    response_serializer=pb.ListPodResourcesResponse.SerializeToString,
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(timeout=10)
            self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
