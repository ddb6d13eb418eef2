"""`kubeling user add NAME --role view|edit|admin [-o DIR]`: a credential for a person.

The key is made here and never leaves this machine: the CLI sends only a CSR
(CN=NAME, O=the role's group, common/identity.py) to Certificates/IssueUser, which
an admin's credentials may call, and the master signs it. The result is written
as a config for the CLI and the Python client (DIR/NAME.conf, data inline, 0600,
for the server this CLI talks to) and as separate files for grpcurl (DIR/NAME.crt,
DIR/NAME.key 0600, DIR/ca.crt). Existing files are not overwritten: a second user
of the same name gets a new key only when asked with --force.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.client.config import ClientConfig
from kubeling.common import identity, pki, targets
from kubeling.common.tls import Credentials
from kubeling.common.token import write_private
from kubeling.v1 import certificates_pb2

_ISSUE = "/kubeling.v1.Certificates/IssueUser"
ROLES = (identity.VIEW, identity.EDIT, identity.ADMIN, identity.DNS)


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "user", _usage, "Issue credentials for people.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    add = add_command(
        actions,
        "add",
        run_add,
        "Make a key and a certificate with a role; write NAME.conf (and files for grpcurl).",
    )
    add.add_argument("name", help="the user's name (the certificate's CN)")
    add.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="view: read only; edit: read, write namespaced objects, exec, logs; admin: all",
    )
    add.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where to write NAME.conf, NAME.crt, NAME.key and ca.crt (default: .)",
    )
    add.add_argument("--force", action="store_true", help="replace existing files of NAME")


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: user add NAME --role view|edit|admin")


def check_name(name: str) -> None:
    """The master refuses these too; saying so before a round trip is clearer."""
    if name.startswith(identity.RESERVED_PREFIXES):
        raise CliError(
            f'error: "{name}" is reserved: user names may not start with '
            f"{' or '.join(identity.RESERVED_PREFIXES)}"
        )
    if not name or name.startswith(".") or "/" in name:
        raise CliError(f'error: "{name}" is not a usable user name (it names files too)')


async def issue(
    ctx: Context, name: str, role: str, key_pem: bytes
) -> certificates_pb2.CertificateResponse:
    try:
        csr = pki.make_csr(key_pem, name, [identity.ROLE_GROUPS[role]])
    except pki.PkiError as exc:
        raise CliError(f'error: "{name}" is not a usable user name: {exc}') from None
    request = certificates_pb2.IssueUserRequest(name=name, role=role, csr=csr)
    async with ctx.channel() as channel:
        call = channel.unary_unary(
            _ISSUE,
            request_serializer=certificates_pb2.IssueUserRequest.SerializeToString,
            response_deserializer=certificates_pb2.CertificateResponse.FromString,
        )
        try:
            reply: certificates_pb2.CertificateResponse = await call(request, timeout=ctx.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise CliError(f"error: {exc.details()}") from None
            raise  # main says whose credentials were refused, and what to do
    return reply


@dataclass(frozen=True)
class UserFiles:
    conf: Path
    crt: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, out: Path, name: str) -> UserFiles:
        return cls(out / f"{name}.conf", out / f"{name}.crt", out / f"{name}.key", out / "ca.crt")

    def existing(self) -> list[str]:
        return [str(p) for p in (self.conf, self.crt, self.key) if p.exists()]

    def write(self, server: str, reply: certificates_pb2.CertificateResponse, key: bytes) -> None:
        self.conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki.write_key(self.key, key)
        write_private(self.crt, reply.certificate.decode())
        # The CA certificate is public: readable, so that the users of DIR can share it.
        self.ca.write_bytes(reply.ca)
        ClientConfig(server, Credentials(reply.ca, reply.certificate, key)).save(self.conf)


async def run_add(args: argparse.Namespace, ctx: Context) -> int:
    name, role = str(args.name), str(args.role)
    check_name(name)
    files = UserFiles.of(Path(args.output_dir), name)
    existing = files.existing()
    if existing and not args.force:
        raise CliError(f"error: {', '.join(existing)} exist; --force replaces them")
    key_pem = pki.make_key()
    reply = await issue(ctx, name, role, key_pem)
    files.write(ctx.server, reply, key_pem)
    until = reply.not_after.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
    ctx.out(f'user "{name}" (role {role}) issued, valid until {until}:')
    ctx.out(f"  {files.conf}  config for kubeling and the Python client (keep it private)")
    ctx.out(f"  {files.crt}, {files.key}, {files.ca}  the same for grpcurl")
    ctx.out("use it:")
    ctx.out(f"  kubeling --config {files.conf} get pods   (or export KUBELING_CONFIG={files.conf})")
    ctx.out(f"  {grpcurl_command(ctx.server, files.ca, files.crt, files.key)} list")
    return 0


def grpcurl_command(server: str, ca: Path, crt: Path, key: Path) -> str:
    """How grpcurl reaches `server` with these files."""
    tls = f"grpcurl -cacert {ca} -cert {crt} -key {key}"
    if server.startswith("unix:"):
        # grpcurl would check the certificate against the socket path.
        return f"{tls} -servername localhost -unix {server.removeprefix('unix:')}"
    if targets.is_list(server):
        # grpcurl takes one address; every master's certificate carries this name.
        first = targets.split_items(server)[0]
        return f"{tls} -servername {targets.MASTER_SERVER_NAME} {first}"
    return f"{tls} {server}"
