"""Kubernetes integration: the training job a pod belongs to (owner rules), GPU → pod from the
kubelet's pod-resources API, and the watcher that registers and finishes jobs in the API."""
