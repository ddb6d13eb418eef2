"""The node IPAM controller's CIDR set: lowest free subnet, occupy, release."""

from __future__ import annotations

import pytest

from kubeling.controllers.nodeipam import CIDRSet


def test_cidr_set_allocates_lowest_free_and_reuses_released() -> None:
    cidrs = CIDRSet("10.244.0.0/22", 24)
    assert cidrs.size == 4
    cidrs.occupy("b", ["10.244.1.0/24"])
    assert cidrs.allocate("a") == "10.244.0.0/24"
    assert cidrs.allocate("c") == "10.244.2.0/24"
    assert cidrs.allocate("d") == "10.244.3.0/24"
    assert cidrs.allocate("e") is None
    assert cidrs.release("b")
    assert cidrs.allocate("e") == "10.244.1.0/24"
    assert cidrs.held_by("e") == ["10.244.1.0/24"]
    assert not cidrs.release("nobody")


def test_cidr_set_occupies_overlaps_and_ignores_foreign_ranges() -> None:
    cidrs = CIDRSet("10.244.0.0/16", 24)
    cidrs.occupy("big", ["10.244.4.0/23"])  # covers two subnets
    cidrs.occupy("small", ["10.244.0.128/25"])  # inside the first
    cidrs.occupy("foreign", ["192.168.0.0/24", "not-a-cidr"])
    assert cidrs.free_count() == 256 - 3
    assert cidrs.held_by("foreign") == []
    # Two nodes claiming one subnet: it stays taken until both are gone.
    cidrs.occupy("twin", ["10.244.0.0/24"])
    assert cidrs.release("small") is False
    assert cidrs.release("twin") is True
    assert cidrs.allocate("next") == "10.244.0.0/24"


def test_cidr_set_rejects_bad_mask_sizes() -> None:
    with pytest.raises(ValueError):
        CIDRSet("10.244.0.0/16", 8)
    with pytest.raises(ValueError):
        CIDRSet("10.0.0.0/8", 25)  # more than 16 bits of subnets
    with pytest.raises(ValueError):
        CIDRSet("10.244.0.0/16", 33)
