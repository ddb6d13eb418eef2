"""A StatefulSet pod's DNS name: the controller gives pod `NAME-i` hostname
`NAME-i` and subdomain serviceName, the EndpointSlice controller publishes the
hostname of pods whose subdomain is the Service, and the cluster DNS answers
`NAME-i.SVC.NS.svc.cluster.local` with the pod's address."""

from __future__ import annotations

from dnslib import QTYPE, RCODE

from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.controllers.endpointslice import endpoint_for
from kubeling.controllers.statefulset import new_pod
from kubeling.dns.records import ClusterIndex
from kubeling.v1 import apps_pb2, core_pb2, discovery_pb2, meta_pb2


def headless(name: str) -> core_pb2.Service:
    svc = core_pb2.Service(metadata=meta_pb2.ObjectMeta(name=name, namespace="demo"))
    svc.spec.cluster_ip = "None"
    svc.spec.selector["app"] = "db"
    svc.spec.ports.add(name="pg", protocol="TCP", port=5432)
    return svc


def stateful_pod(ordinal: int, ip: str) -> core_pb2.Pod:
    sts = apps_pb2.StatefulSet(api_version="apps/v1", kind="StatefulSet")
    sts.metadata.name, sts.metadata.namespace, sts.metadata.uid = "db", "demo", "u"
    sts.spec.service_name = "db"
    sts.spec.template.metadata.labels["app"] = "db"
    sts.spec.template.spec.containers.add(name="pg", image="postgres:15")
    pod = new_pod(sts, "rev", ordinal)
    pod.status.phase = "Running"
    pod.status.pod_ip = ip
    pod.status.conditions.add(type="Ready", status="True")
    return pod


def test_hostname_published_only_for_the_pods_subdomain() -> None:
    pod = stateful_pod(0, "10.244.1.5")
    assert (pod.spec.hostname, pod.spec.subdomain) == ("db-0", "db")
    endpoint = endpoint_for(headless("db"), pod)
    assert endpoint is not None and endpoint.hostname == "db-0"
    other = endpoint_for(headless("db-read"), pod)
    assert other is not None and other.hostname == ""


def test_cluster_dns_answers_the_stable_pod_name() -> None:
    svc = headless("db")
    endpoints = [endpoint_for(svc, stateful_pod(i, f"10.244.{i + 1}.5")) for i in range(2)]
    index = ClusterIndex()
    index.put_service(svc)
    index.put_slice(
        discovery_pb2.EndpointSlice(
            metadata=meta_pb2.ObjectMeta(
                name="db-x", namespace="demo", labels={SERVICE_NAME_LABEL: "db"}
            ),
            address_type="IPv4",
            endpoints=[e for e in endpoints if e is not None],
            ports=[discovery_pb2.EndpointPort(name="pg", protocol="TCP", port=5432)],
        )
    )
    answer = index.resolve("db-1.db.demo.svc.cluster.local", QTYPE.A)
    assert answer is not None
    assert [str(rr.rdata) for rr in answer.answers] == ["10.244.2.5"]
    missing = index.resolve("db-2.db.demo.svc.cluster.local", QTYPE.A)
    assert missing is not None and missing.rcode == RCODE.NXDOMAIN
