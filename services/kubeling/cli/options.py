"""Flags several subcommands share, spelled as kubectl spells them."""

from __future__ import annotations

import argparse

from kubeling.api.kinds import Kind

DEFAULT_NAMESPACE = "default"


def add_namespace(parser: argparse.ArgumentParser, all_namespaces: bool = False) -> None:
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")
    if all_namespaces:
        parser.add_argument(
            "-A",
            "--all-namespaces",
            action="store_true",
            help="list across all namespaces",
        )


def add_selector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db"
    )


def add_filenames(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        required=required,
        metavar="FILE",
        help="a manifest file, a directory of them, or - for stdin (repeatable)",
    )


def namespace_for(kind: Kind, args: argparse.Namespace) -> str:
    """The namespace to use for `kind`: "" for cluster-scoped kinds and with -A."""
    if not kind.namespaced or getattr(args, "all_namespaces", False):
        return ""
    return str(args.namespace or DEFAULT_NAMESPACE)
