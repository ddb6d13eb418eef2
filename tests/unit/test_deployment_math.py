"""Deployment helpers: IntOrString rounding, template hashes, deletion order."""

from __future__ import annotations

from google.protobuf import struct_pb2

from kubeling.controllers import podutil
from kubeling.controllers.deployment import (
    HASH_LABEL,
    resolve,
    surge_and_unavailable,
    template_hash,
)
from kubeling.v1 import apps_pb2, core_pb2


def _value(raw: str | int) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(raw, str):
        value.string_value = raw
    else:
        value.number_value = raw
    return value


def test_percentages_round_surge_up_and_unavailable_down() -> None:
    assert resolve(_value("25%"), 10, round_up=True) == 3
    assert resolve(_value("25%"), 10, round_up=False) == 2
    assert resolve(_value(2), 10, round_up=False) == 2


def test_zero_surge_and_unavailable_allows_one_unavailable() -> None:
    d = apps_pb2.Deployment()
    d.spec.replicas = 3
    d.spec.strategy.type = "RollingUpdate"
    d.spec.strategy.rolling_update.max_surge.CopyFrom(_value(0))
    d.spec.strategy.rolling_update.max_unavailable.CopyFrom(_value("10%"))
    assert surge_and_unavailable(d) == (0, 1)


def test_template_hash_ignores_hash_label_and_changes_with_template() -> None:
    template = core_pb2.PodTemplateSpec()
    template.spec.containers.add(name="a", image="x:1")
    labelled = core_pb2.PodTemplateSpec()
    labelled.CopyFrom(template)
    labelled.metadata.labels[HASH_LABEL] = "abc"
    assert template_hash(template) == template_hash(labelled)
    assert template_hash(template) != template_hash(template, collision_count=1)
    template.spec.containers[0].image = "x:2"
    assert template_hash(template) != template_hash(labelled)


def test_deletion_order_prefers_unscheduled_then_not_ready() -> None:
    scheduled_ready = core_pb2.Pod()
    scheduled_ready.spec.node_name = "n1"
    scheduled_ready.status.phase = "Running"
    scheduled_ready.status.conditions.add(type="Ready", status="True")
    scheduled_not_ready = core_pb2.Pod()
    scheduled_not_ready.spec.node_name = "n1"
    scheduled_not_ready.status.phase = "Running"
    unscheduled = core_pb2.Pod()
    ranked = sorted(
        [scheduled_ready, scheduled_not_ready, unscheduled], key=podutil.deletion_order_key
    )
    assert ranked == [unscheduled, scheduled_not_ready, scheduled_ready]
