"""The CLI's reading of manifests (kubeling.client.manifests), whose problems
become CliErrors: one line printed, no traceback."""

from __future__ import annotations

from typing import TextIO

from kubeling.cli.errors import CliError
from kubeling.client import manifests
from kubeling.client.manifests import Manifest, quantity_text

__all__ = ["Manifest", "load_manifests", "parse_manifests", "quantity_text"]


def load_manifests(paths: list[str], stdin: TextIO) -> list[Manifest]:
    try:
        return manifests.load_manifests(paths, stdin)
    except manifests.ManifestError as exc:
        raise CliError(exc.message) from None


def parse_manifests(text: str, source: str) -> list[Manifest]:
    try:
        return manifests.parse_manifests(text, source)
    except manifests.ManifestError as exc:
        raise CliError(exc.message) from None
