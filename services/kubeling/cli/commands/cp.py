"""`kubeling cp [NS/]POD:PATH LOCAL` and `kubeling cp LOCAL [NS/]POD:PATH [-c C]`: copy
files and directories out of and into a container, as kubectl does: a tar
archive through an exec session's stdout or stdin (the container needs `tar`;
busybox has it).

Into the pod, the archive is fed to `head -c SIZE | tar x`: stdin cannot be
half-closed over the runtime's streaming protocol (v4.channel.k8s.io), so the
archive's length, not the end of stdin, tells the container it has all of it.
Out of the pod, members are checked before extraction: nothing lands outside
the destination (no absolute paths, no "..", no links pointing out).
"""

from __future__ import annotations

import argparse
import io
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path

import grpc

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.commands.logs import kubelet_error
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.client import Client
from kubeling.client.pods import open_exec
from kubeling.v1 import core_pb2

_CHUNK = 32 * 1024


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "cp", run, "Copy files to and from containers.")
    parser.add_argument("source", metavar="SRC", help="LOCAL or [NAMESPACE/]POD:PATH")
    parser.add_argument("dest", metavar="DEST", help="LOCAL or [NAMESPACE/]POD:PATH")
    parser.add_argument("-c", "--container", default="", help="the container (if the pod has many)")
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")


def _remote(text: str, default_namespace: str) -> tuple[str, str, str] | None:
    """(namespace, pod, path) of "[NS/]POD:PATH"; None for a local path."""
    head, colon, path = text.partition(":")
    if not colon or not head or "/" in head.rpartition("/")[0] or text.startswith(("/", ".")):
        return None
    namespace, slash, pod = head.rpartition("/")
    if not path:
        raise CliError(f"error: {text!r}: a path is needed after POD:")
    return (namespace if slash else default_namespace), pod, path


async def _exec(
    api: Client, ns: str, pod: str, container: str, command: list[str], stdin: bytes | None
) -> tuple[bytes, bytes, int]:
    call = await open_exec(api, pod, command, ns, container, stdin=stdin is not None)
    out, err, code = io.BytesIO(), io.BytesIO(), 1
    await call.initial_metadata()  # the session is open (or refused): then write
    if stdin is not None and not call.done():
        for offset in range(0, len(stdin), _CHUNK):
            await call.write(core_pb2.ExecStreamRequest(stdin=stdin[offset : offset + _CHUNK]))
    async for message in call:
        kind = message.WhichOneof("kind")
        if kind == "stdout":
            out.write(message.stdout)
        elif kind == "stderr":
            err.write(message.stderr)
        elif kind == "exit":
            code = message.exit.exit_code
            if message.exit.message:
                err.write(message.exit.message.encode())
    return out.getvalue(), err.getvalue(), code


def _safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            raise CliError(f"error: refusing to extract {member.name!r}: outside the destination")
        if (member.issym() or member.islnk()) and (
            member.linkname.startswith("/") or ".." in Path(member.linkname).parts
        ):
            continue  # a link out of the copy is skipped, as kubectl does
        if member.isdev():
            continue
        members.append(member)
    return members


async def _from_pod(api: Client, remote: tuple[str, str, str], container: str, local: Path) -> None:
    ns, pod, path = remote
    parent, base = posixpath.split(path.rstrip("/") or "/")
    out, err, code = await _exec(
        api, ns, pod, container, ["tar", "cf", "-", "-C", parent or "/", base], None
    )
    if code != 0:
        raise CliError(f"error: {err.decode('utf-8', 'replace').strip() or 'tar failed'}")
    _extract(out, base, local)


def _extract(archive: bytes, base: str, local: Path) -> None:
    """`base` of the archive to `local` (into it, when it is a directory)."""
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, members=_safe_members(tar), filter="tar")
        copied = Path(scratch) / base
        target = local / base if local.is_dir() else local
        if copied.is_dir():
            shutil.copytree(copied, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(copied, target, follow_symlinks=False)


def _archive(local: Path, base: str) -> bytes:
    if not local.exists():
        raise CliError(f"error: {local}: no such file or directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(str(local), arcname=base)
    return buffer.getvalue()


async def _to_pod(api: Client, local: Path, remote: tuple[str, str, str], container: str) -> None:
    ns, pod, path = remote
    if path.endswith("/"):
        # POD:DIR/ names a directory to copy into, under the local name.
        parent, base = path.rstrip("/") or "/", local.name
    else:
        parent, base = posixpath.split(path.rstrip("/") or "/")
    data = _archive(local, base)
    script = 'head -c "$0" | tar -xmf - -C "$1"'
    command = ["sh", "-c", script, str(len(data)), parent or "/"]
    _, err, code = await _exec(api, ns, pod, container, command, data)
    if code != 0:
        raise CliError(f"error: {err.decode('utf-8', 'replace').strip() or 'tar failed'}")


async def run(args: argparse.Namespace, ctx: Context) -> int:
    namespace = args.namespace or "default"
    source, dest = _remote(args.source, namespace), _remote(args.dest, namespace)
    if (source is None) == (dest is None):
        raise CliError("error: one of SRC and DEST must be a remote path: [NAMESPACE/]POD:PATH")
    async with ctx.client() as api:
        try:
            if source is not None:
                await _from_pod(api, source, args.container, Path(args.dest))
            elif dest is not None:
                await _to_pod(api, Path(args.source), dest, args.container)
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
    return 0
