"""Kind lookup and the names kubectl prints for resources ("deployment.apps/web")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from kubeling.api.kinds import Kind, find_kind
from kubeling.cli.errors import CliError


def resolve_kind(text: str) -> Kind:
    """A kind by name, plural or short name; kubectl also accepts "deployment.apps"."""
    kind = find_kind(text)
    if kind is None and "." in text:
        base, _, group = text.partition(".")
        kind = find_kind(base)
        if kind is not None and group_of(kind) != group:
            kind = None
    if kind is None:
        raise CliError(f'error: the server doesn\'t have a resource type "{text}"')
    return kind


def group_of(kind: Kind) -> str:
    """The API group: "" for the core group, "apps" for "apps/v1"."""
    group, _, _ = kind.api_version.rpartition("/")
    return group


def resource_name(kind: Kind) -> str:
    """kubectl's singular, group-qualified name: "pod", "deployment.apps"."""
    group = group_of(kind)
    return f"{kind.name.lower()}.{group}" if group else kind.name.lower()


def object_name(kind: Kind, name: str) -> str:
    return f"{resource_name(kind)}/{name}"


@dataclass(frozen=True)
class Target:
    """One named object the user asked for on the command line."""

    kind: Kind
    name: str


def parse_targets(words: list[str]) -> tuple[list[Kind], list[Target]]:
    """Read `KIND[,KIND...] [NAME ...]` or `KIND/NAME ...` as kubectl does.

    Returns the kinds to list (only when no names were given) and the named targets.
    """
    if not words:
        raise CliError(
            "error: you must specify the type of resource, e.g. pods, deployments, services"
        )
    if any("/" in word for word in words):
        targets = []
        for word in words:
            kind_text, slash, name = word.partition("/")
            if not slash or not kind_text or not name:
                raise CliError(
                    "error: there is no need to specify a resource type as a separate argument "
                    f'when passing arguments in resource/name form (got "{word}")'
                )
            targets.append(Target(resolve_kind(kind_text), name))
        return [], targets
    first, *names = words
    kinds = [resolve_kind(text) for text in first.split(",") if text]
    if not kinds:
        raise CliError(f'error: no resource type in "{first}"')
    if names:
        return [], [Target(kind, name) for kind in kinds for name in names]
    return kinds, []


def meta(obj: Message) -> Any:
    """The object's ObjectMeta (every kind has one; typed loosely on purpose)."""
    return obj.metadata  # type: ignore[attr-defined]
