"""kubeling: a small, real Kubernetes-style cluster."""

__version__ = "0.1.0"
