"""Pods inside a lab for lab tests: a busybox client pod per namespace, commands run
in it through the master (exec), and names resolved from it the way applications
and busybox's nslookup see them. Traffic stays in the lab's namespaces."""

from __future__ import annotations

import re
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from kubeling.client import Client
from kubeling.client.pods import pod_exec
from kubeling.v1 import core_pb2


def client_pod(namespace: str) -> core_pb2.Pod:
    text = f"""
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {{name: main, image: busybox, command: ["sleep", "100000"]}}
"""
    return parse(text, core_pb2.Pod())


def parse(text: str, message: Any) -> Any:
    return json_format.ParseDict(yaml.safe_load(text), message)


def ready(pod: core_pb2.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


async def run_in(api: Client, pod: str, namespace: str, command: list[str]) -> str:
    reply = await pod_exec(api, pod, command, namespace, timeout_seconds=30)
    assert reply.exit_code == 0, (command, reply)
    return str(reply.stdout)


def addresses(nslookup_output: str) -> set[str]:
    """The answer's IPv4 addresses in busybox nslookup's output (not the server's,
    which comes first, before the first "Name:")."""
    _, _, answer = nslookup_output.partition("Name:")
    return set(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", answer))


async def nslookup(api: Client, namespace: str, name: str) -> set[str]:
    """The IPv4 addresses `name` resolves to in the client pod of `namespace`, asked
    of the cluster DNS with busybox's nslookup. It asks with every search domain and
    exits 1 when any of them is NXDOMAIN, even after an answer: the answers are what
    counts. (It applies the search list only to names without a dot.)"""
    reply = await pod_exec(api, "client", ["nslookup", name], namespace, timeout_seconds=30)
    assert "10.96.0.10" in reply.stdout, reply  # the cluster DNS answered
    return addresses(reply.stdout)


async def resolve(api: Client, namespace: str, name: str) -> str:
    """The address the C library's resolver (resolv.conf's search list and ndots,
    as applications see it) gives `name` in the client pod of `namespace`: busybox
    ping prints it before it sends ("" when the name does not resolve)."""
    reply = await pod_exec(
        api, "client", ["ping", "-c", "1", "-W", "1", name], namespace, timeout_seconds=30
    )
    found = re.match(r"PING \S+ \((\d+\.\d+\.\d+\.\d+)\)", reply.stdout)
    return found.group(1) if found else ""


async def create_once(resource: Any, obj: Any) -> None:
    try:
        await resource.create(obj)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
