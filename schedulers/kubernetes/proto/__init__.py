"""Generated protobuf messages of the kubelet's pod-resources API (``make proto`` writes them from
``podresources.proto``; ruff and mypy skip ``*_pb2.py``: generated code, typed by its ``.pyi``)."""
