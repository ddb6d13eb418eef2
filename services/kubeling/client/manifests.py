"""Reading manifests: files, directories and stdin, YAML or JSON, into API objects.

Here in the client, not the CLI, because tools besides `kubeling apply` read them
(the lab applies deploy/addons/); a problem is a ManifestError whose message is
the line the CLI prints.

Every document is checked against the kind's protobuf descriptor before
`json_format.ParseDict` sees it, so mistakes are reported with the manifest's
own field path (`spec.template.spec.contaners`) instead of protobuf's message
names, and YAML scalars Kubernetes accepts (`cpu: 1`) are normalised first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from kubeling.api.kinds import ALL_KINDS, Kind, kind_by_api

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "STDIN"

# map<string, string> fields whose values are quantities: YAML reads `cpu: 1` as an
# int and `cpu: 0.5` as a float, and Kubernetes accepts both, so they become "1"/"0.5".
_QUANTITY_MAPS = frozenset({"limits", "requests", "capacity", "allocatable"})
_INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


class ManifestError(ValueError):
    """A manifest that cannot be read or does not describe a valid object."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Manifest:
    """One object read from a manifest, with where it came from for messages."""

    source: str  # the path as given, or "STDIN"
    where: str  # "document 2", or "document 1, item 3" inside a List
    kind: Kind
    obj: Message

    @property
    def name(self) -> str:
        return str(self.obj.metadata.name)  # type: ignore[attr-defined]

    @property
    def namespace(self) -> str:
        return str(self.obj.metadata.namespace)  # type: ignore[attr-defined]

    @property
    def label(self) -> str:
        return f"{self.source}: {self.where} ({self.kind.name} {self.name})"


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as text (protobuf parses RFC 3339 itself)
    and rejects duplicate keys, which kubectl also refuses."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key}"', key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# ----------------------------------------------------------------------- reading


def read_sources(paths: list[str], stdin: TextIO) -> Iterator[tuple[str, str]]:
    """(name, text) for each -f argument; directories give their manifest files, sorted."""
    for given in paths:
        if given == "-":
            yield STDIN_NAME, stdin.read()
            continue
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
            for file in files:
                if file.is_file():
                    yield str(file), _read(file)
        elif path.exists():
            yield given, _read(path)
        else:
            raise ManifestError(f'error: the path "{given}" does not exist')


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"error: cannot read {path}: {exc}") from None


def load_manifests(paths: list[str], stdin: TextIO) -> list[Manifest]:
    """Every object in every source, all parsed before any is used: a bad document
    anywhere fails the whole load, so nothing is half-applied."""
    manifests: list[Manifest] = []
    for source, text in read_sources(paths, stdin):
        manifests += parse_manifests(text, source)
    return manifests


def parse_manifests(text: str, source: str) -> list[Manifest]:
    manifests: list[Manifest] = []
    for index, document in enumerate(_documents(text, source), start=1):
        if document is None:
            continue  # an empty document, e.g. after a trailing "---"
        if isinstance(document, dict) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ManifestError(
                    f"error: {source}: document {index} (List): items must be a list"
                )
            for item_index, item in enumerate(items, start=1):
                manifests.append(decode(item, source, f"document {index}, item {item_index}"))
        else:
            manifests.append(decode(document, source, f"document {index}"))
    return manifests


def _documents(text: str, source: str) -> list[Any]:
    try:
        if source.endswith(".json"):
            return [json.loads(text)]
        return list(yaml.load_all(text, Loader=_Loader))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"error: {source}: invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"error: {source}: invalid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------- decoding


class _Problem(Exception):
    """A mistake at a field path, turned into a message by `decode`."""


def decode(document: Any, source: str, where: str) -> Manifest:
    """One document as an API object of its kind, or a ManifestError naming the field."""
    if not isinstance(document, dict):
        raise ManifestError(f"error: {source}: {where}: expected an object, got {_show(document)}")
    api_version, kind_name = document.get("apiVersion"), document.get("kind")
    for key, value in (("apiVersion", api_version), ("kind", kind_name)):
        if not value or not isinstance(value, str):
            raise ManifestError(f'error: {source}: {where}: "{key}" is missing or not a string')
    meta = document.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    label = (
        f"{source}: {where} ({kind_name} {name})" if name else f"{source}: {where} ({kind_name})"
    )
    kind = kind_by_api(str(api_version), str(kind_name))
    if kind is None:
        raise ManifestError(f"error: {label}: {_no_match(str(api_version), str(kind_name))}")
    try:
        cleaned = _walk_message(document, cast(Descriptor, kind.message.DESCRIPTOR), "")
        obj = json_format.ParseDict(cleaned, kind.message(), ignore_unknown_fields=False)
    except _Problem as exc:
        raise ManifestError(f"error: {label}: {exc}") from None
    except json_format.ParseError as exc:
        raise ManifestError(f"error: {label}: {' '.join(str(exc).split())}") from None
    if not obj.metadata.name:  # type: ignore[attr-defined]
        raise ManifestError(f"error: {label}: metadata.name is required")
    return Manifest(source, where, kind, obj)


def _no_match(api_version: str, kind_name: str) -> str:
    expected = [k.api_version for k in ALL_KINDS if k.name == kind_name]
    if expected:
        return f'apiVersion "{api_version}" is wrong for kind {kind_name}: use "{expected[0]}"'
    return f'no matches for kind "{kind_name}" in version "{api_version}"'


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk_message(value: Any, descriptor: Descriptor, path: str) -> Any:
    if descriptor.full_name == "google.protobuf.Value":
        # IntOrString fields (ports, maxSurge): a number or a name/percentage.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Problem(f"{path}: expected an integer or a string, got {_show(value)}")
        return value
    if descriptor.full_name == "google.protobuf.Timestamp":
        if not isinstance(value, str):
            raise _Problem(f"{path}: expected an RFC 3339 time string, got {_show(value)}")
        return value
    if not isinstance(value, dict):
        raise _Problem(f"{path or 'document'}: expected an object, got {_show(value)}")
    fields = {field.json_name: field for field in descriptor.fields}
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        child = _join(path, str(key))
        if field is None:
            raise _Problem(f'unknown field "{child}"')
        if item is not None:  # null means "not set", as in Kubernetes
            cleaned[key] = _walk_field(item, field, child)
    return cleaned


def _walk_field(value: Any, field: FieldDescriptor, path: str) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise _Problem(f"{path}: expected a map of strings, got {_show(value)}")
        value_field = field.message_type.fields_by_name["value"]
        quantity = field.name in _QUANTITY_MAPS
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Problem(f"{path}: keys must be strings, got {_show(key)}")
            cleaned[key] = _walk_single(item, value_field, f"{path}[{key}]", quantity)
        return cleaned
    if field.is_repeated:
        if not isinstance(value, list):
            raise _Problem(f"{path}: expected a list, got {_show(value)}")
        return [_walk_single(item, field, f"{path}[{i}]") for i, item in enumerate(value)]
    return _walk_single(value, field, path)


def _walk_single(value: Any, field: FieldDescriptor, path: str, quantity: bool = False) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _walk_message(value, cast(Descriptor, field.message_type), path)
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        if quantity and isinstance(value, int | float) and not isinstance(value, bool):
            return quantity_text(value)
        # Like kubectl, no silent conversion: `version: 1` in labels is a mistake to fix.
        hint = f' (quote it: "{_yaml_text(value)}")' if _is_scalar(value) else ""
        raise _Problem(f"{path}: expected a string, got {_show(value)}{hint}")
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _Problem(f"{path}: expected true or false, got {_show(value)}")
        return value
    if kind in _INT_TYPES:
        # Proto JSON writes 64-bit integers as strings ("generation": "1"), so output
        # of `get -o yaml` must read back; YAML authors write plain numbers.
        if kind in _INT64_TYPES and isinstance(value, str) and _is_integer_text(value):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"{path}: expected an integer, got {_show(value)}")
        return value
    if kind in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Problem(f"{path}: expected a number, got {_show(value)}")
        return value
    return value  # enums and bytes: protobuf checks them


def quantity_text(value: int | float) -> str:
    """A YAML number as the quantity string Kubernetes would read: 1 → "1", 0.5 → "0.5"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _is_integer_text(text: str) -> bool:
    return text.removeprefix("-").isdigit() and text.isascii()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | bool)


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({_yaml_text(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f'a string ("{value}")'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__
