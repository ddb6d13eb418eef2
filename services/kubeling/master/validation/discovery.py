"""Validation of the discovery API group: EndpointSlices."""

from __future__ import annotations

from typing import cast

from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.master.validation.common import (
    PROTOCOLS,
    Errors,
    UpdateValidator,
    Validator,
    check,
    duplicate,
    immutable,
    invalid,
    ip_version,
    one_of,
    port_number,
    required,
    too_many,
)
from kubeling.v1 import discovery_pb2

MAX_ENDPOINTS_PER_SLICE = 1000
MAX_ADDRESSES_PER_ENDPOINT = 100
MAX_PORTS_PER_SLICE = 100
_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def _endpoint_address(path: str, address_type: str, address: str) -> Errors:
    if address_type in ("IPv4", "IPv6"):
        if ip_version(address) == int(address_type[-1]):
            return []
        return [invalid(path, address, f"must be a valid {address_type} address")]
    if address_type == "FQDN":
        return check(path, address, naming.dns1123_subdomain)
    return []  # the address type itself is reported


def _endpoint_slice(obj: Message) -> Errors:
    eps = cast(discovery_pb2.EndpointSlice, obj)
    errs: Errors = []
    errs += one_of("addressType", eps.address_type, _ADDRESS_TYPES)
    if len(eps.endpoints) > MAX_ENDPOINTS_PER_SLICE:
        errs.append(too_many("endpoints", len(eps.endpoints), MAX_ENDPOINTS_PER_SLICE))
    for i, endpoint in enumerate(eps.endpoints):
        item = f"endpoints[{i}]"
        addresses = endpoint.addresses
        if not addresses:
            errs.append(required(f"{item}.addresses", "must contain at least 1 address"))
        elif len(addresses) > MAX_ADDRESSES_PER_ENDPOINT:
            errs.append(too_many(f"{item}.addresses", len(addresses), MAX_ADDRESSES_PER_ENDPOINT))
        for j, address in enumerate(addresses):
            errs += _endpoint_address(f"{item}.addresses[{j}]", eps.address_type, address)
        if endpoint.hostname:
            errs += check(f"{item}.hostname", endpoint.hostname, naming.dns1123_label)
        if endpoint.node_name:
            errs += check(f"{item}.nodeName", endpoint.node_name, naming.dns1123_subdomain)
    if len(eps.ports) > MAX_PORTS_PER_SLICE:
        errs.append(too_many("ports", len(eps.ports), MAX_PORTS_PER_SLICE))
    names: set[str] = set()
    for i, port in enumerate(eps.ports):
        item = f"ports[{i}]"
        # Named after Service ports, which are DNS labels; "" (one unnamed port) is allowed once.
        if port.name:
            errs += check(f"{item}.name", port.name, naming.dns1123_label)
        if port.name in names:
            errs.append(duplicate(f"{item}.name", port.name))
        names.add(port.name)
        if port.HasField("port"):
            errs += port_number(f"{item}.port", port.port, low=0)
        errs += one_of(f"{item}.protocol", port.protocol, PROTOCOLS)
    return errs


def _endpoint_slice_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(discovery_pb2.EndpointSlice, new_obj)
    old = cast(discovery_pb2.EndpointSlice, old_obj)
    return immutable("addressType", new.address_type, old.address_type)


VALIDATORS: dict[type[Message], Validator] = {discovery_pb2.EndpointSlice: _endpoint_slice}
UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {
    discovery_pb2.EndpointSlice: _endpoint_slice_update,
}
