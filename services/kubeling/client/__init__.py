"""The asyncio Python client for the kubeling API (used by the CLI, kubelet, proxy,
controllers, and other services)."""

from kubeling.client.client import Client, ResourceClient, WatchEvent

__all__ = ["Client", "ResourceClient", "WatchEvent"]
