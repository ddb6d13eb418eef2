"""TLS bootstrap of a node's kubelet and kube-proxy, as kubeadm's join does it.

A new node has a bootstrap token (a secret) and the master's CA pin
(`--discovery-token-ca-cert-hash sha256:<SPKI hash>`), nothing else. Joining:

1. `fetch_ca`: a TLS handshake with the master's join port (6444), which serves
   `[server cert, CA cert]` without asking for a client certificate. Nothing is
   verified yet, so nothing is sent either: the CA is taken from the chain only if
   its pin equals the one given, else joining stops before the token leaves the
   machine (a stranger in the middle learns nothing).
2. `join`: Certificates/Join over TLS trusting only that CA, with the token and a
   CSR for a new key whose subject is the identity the master will sign
   (`CN=system:node:NAME, O=system:nodes` or `CN=system:kube-proxy:NAME,
   O=system:node-proxiers`). The certificate, key and CA go to a `CredentialDir`
   (mode 0600).
3. `CertificateRenewer`: once 80% of the certificate's lifetime has passed,
   Certificates/Renew on the master's main port with the current certificate
   (a new key, the same subject); the files are replaced, a server built from the
   directory serves the new certificate to new connections, and a callback lets
   the process switch its client (`Client.use_credentials`).

`load_or_join` is what a process calls at start: the stored credentials while
they are valid and for the right identity, else a join. `add_node_flags`,
`finish_node_args` and `connect` are the command-line side that kubeling-kubelet
and kubeling-proxy share (--token-file, --join-address,
--discovery-token-ca-cert-hash, --cert-dir, --insecure).

Several masters: --master and --join-address take comma-separated lists
(common/targets.py). `fetch_ca` tries the join ports in order until one answers
(a CA with another pin stops it: that is no outage); joining and renewing go over
one gRPC channel to all of them, which uses whichever master answers.

The lifetime the 80% is taken of starts when the certificate was written here
(the file's mtime) when that is later than its notBefore: the master backdates
notBefore a few minutes for clock skew, which would otherwise make a short-lived
certificate due for renewal the moment it arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from kubeling.client.client import Client
from kubeling.common import identity, pki, rpc, targets
from kubeling.common.peer import is_loopback_address
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.common.token import read_token_file
from kubeling.v1 import certificates_pb2, certificates_pb2_grpc

log = structlog.get_logger(__name__)

ROLE_NODE = "node"
ROLE_PROXY = "proxy"
JOIN_PORT = 6444
# Renew once this share of the certificate's lifetime has passed (kubelet: 70-90%).
RENEW_AT = 0.8
# The renewer looks at the clock at least this often (a suspended machine, a clock
# that jumped), and retries a failed renewal with back-off up to this long.
_MAX_SLEEP = 300.0
_MAX_RETRY_WAIT = 60.0
_CALL_TIMEOUT = 30.0
_HASH_FLAG = "--discovery-token-ca-cert-hash"
_ENCODING_PEM: int = getattr(ssl, "ENCODING_PEM", 1)  # _ssl's; typeshed lacks it

Renewed = Callable[[Credentials], Awaitable[None]]


class BootstrapError(Exception):
    """Joining or renewing cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Subject:
    """The identity a node's kubelet or proxy asks for (and the master signs)."""

    role: str
    node_name: str

    @property
    def identity(self) -> identity.Identity:
        if self.role == ROLE_NODE:
            return identity.node_identity(self.node_name)
        if self.role == ROLE_PROXY:
            return identity.proxy_identity(self.node_name)
        raise ValueError(f"role must be {ROLE_NODE!r} or {ROLE_PROXY!r}, not {self.role!r}")

    def csr(self, key_pem: bytes) -> bytes:
        who = self.identity
        return pki.make_csr(key_pem, who.user, who.groups)


# -- discovery ---------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """("10.0.0.1", 6444) from "10.0.0.1:6444"; IPv6 as "[::1]:6444"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BootstrapError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def default_join_address(master: str) -> str:
    """The master's host with the join port, for each master of a list ("" when
    the master is a unix socket)."""
    if master.startswith("unix:"):
        return ""
    if targets.is_list(master):
        try:
            endpoints = targets.parse_list(master)
        except targets.TargetError as exc:
            raise BootstrapError(str(exc)) from None
        return ",".join(str(targets.Endpoint(e.host, JOIN_PORT)) for e in endpoints)
    host, _ = split_address(master)
    return f"[{host}]:{JOIN_PORT}" if ":" in host else f"{host}:{JOIN_PORT}"


def check_addresses(flag: str, value: str) -> None:
    """BootstrapError naming `flag` when `value` is a list that cannot be used."""
    if targets.is_list(value):
        try:
            targets.parse_list(value)
        except targets.TargetError as exc:
            raise BootstrapError(f"{flag}: {exc}") from None


def normalize_pin(pin: str) -> str:
    pin = pin.strip().lower()
    digest = pin.removeprefix("sha256:")
    if not pin.startswith("sha256:") or len(digest) != 64 or not _is_hex(digest):
        raise BootstrapError(
            f"{_HASH_FLAG} must be sha256:<64 hex digits> (the master prints it with the "
            f"join command), not {pin!r}"
        )
    return pin


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _peer_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent (PEM), unverified. Python 3.13 has this as
    SSLSocket.get_unverified_chain; 3.11 and 3.12 only on the private _sslobj."""
    getter = getattr(sock, "get_unverified_chain", None)
    if getter is None:
        getter = sock._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    out: list[bytes] = []
    for cert in getter() or []:
        if isinstance(cert, bytes):  # 3.13's public method gives DER
            out.append(ssl.DER_cert_to_PEM_cert(cert).encode())
            continue
        data = cert.public_bytes(_ENCODING_PEM)  # _ssl.Certificate: PEM text
        out.append(data.encode() if isinstance(data, str) else data)
    return out


class _Unreachable(BootstrapError):
    """No TLS handshake with a join port (another master may answer)."""


def fetch_ca(join_address: str, pin: str, timeout: float = 10.0) -> bytes:
    """The cluster CA (PEM) from the chain the join port at `join_address` serves,
    if its pin is `pin`; BootstrapError otherwise. Only a TLS handshake happens: no
    byte of a request is sent, so a wrong master learns no secret. Blocking.

    A list of join ports is tried in order until one answers; one that answers with
    another CA stops the search (a wrong CA is not an outage to route around)."""
    pin = normalize_pin(pin)
    if not targets.is_list(join_address):
        return _fetch_ca(join_address, pin, timeout)
    check_addresses("--join-address", join_address)
    failures = []
    for item in targets.split_items(join_address):
        try:
            return _fetch_ca(item, pin, timeout)
        except _Unreachable as exc:
            failures.append(str(exc))
    raise BootstrapError("; ".join(failures))


def _fetch_ca(join_address: str, pin: str, timeout: float) -> bytes:
    host, port = split_address(join_address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Nothing can be verified before the pin is checked; the pin is the check.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse a handshake without it
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = _peer_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise _Unreachable(f"cannot reach the master's join port {join_address}: {exc}") from None
    seen = []
    for cert_pem in chain:
        try:
            found = pki.ca_pin(cert_pem)
        except pki.PkiError:
            continue
        if found == pin:
            return cert_pem
        if _is_ca(cert_pem):
            seen.append(found)
    got = ", ".join(seen) or "none (its chain carries no CA certificate)"
    raise BootstrapError(
        f"the master's CA {got} at {join_address} does not match {_HASH_FLAG} {pin}; "
        "refusing to send the token"
    )


def _is_ca(cert_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# -- join and renew ----------------------------------------------------------------


def _public_key(pem: bytes, is_key: bool) -> bytes:
    if is_key:
        key = serialization.load_pem_private_key(pem, password=None)
        public = key.public_key()
    else:
        public = x509.load_pem_x509_certificate(pem).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _checked(
    reply: certificates_pb2.CertificateResponse, key_pem: bytes, subject: Subject, ca_pem: bytes
) -> Credentials:
    """The reply as credentials, once it is what was asked for: a certificate for
    our key, with our subject, from the CA we trust."""
    cert_pem = bytes(reply.certificate)
    try:
        info = pki.cert_info(cert_pem)
        same_key = _public_key(cert_pem, False) == _public_key(key_pem, True)
    except (pki.PkiError, ValueError) as exc:
        raise BootstrapError(f"the master sent no usable certificate: {exc}") from None
    who = subject.identity
    if not same_key or info.common_name != who.user or set(info.organizations) != set(who.groups):
        raise BootstrapError(
            f"the master signed CN={info.common_name}, O={','.join(info.organizations)} "
            f"for another key or name than asked (CN={who.user}, O={','.join(who.groups)})"
        )
    ca = bytes(reply.ca) or ca_pem
    if pki.ca_pin(ca) != pki.ca_pin(ca_pem):
        raise BootstrapError("the master answered with another CA than the one it serves")
    return Credentials(ca, cert_pem, key_pem)


def _rpc_failure(doing: str, exc: grpc.aio.AioRpcError) -> BootstrapError:
    return BootstrapError(f"{doing}: {exc.code().name}: {exc.details()}")


async def join(
    join_address: str,
    ca_pem: bytes,
    token: str,
    role: str,
    node_name: str,
    addresses: Sequence[str],
    cred_dir: CredentialDir,
    call_timeout: float = _CALL_TIMEOUT,
) -> Credentials:
    """Certificates/Join at `join_address`, trusting only `ca_pem` and presenting
    no certificate; the new credentials are saved to `cred_dir` (0600)."""
    subject = Subject(role, node_name)
    key = pki.make_key()
    request = certificates_pb2.JoinRequest(
        token=token,
        role=role,
        node_name=node_name,
        csr=subject.csr(key),
        addresses=list(addresses),
    )
    async with rpc.channel(join_address, credentials=Credentials(ca_pem, b"", b"")) as channel:
        stub = certificates_pb2_grpc.CertificatesStub(channel)
        try:
            reply = await stub.Join(request, timeout=call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(f"joining through {join_address} failed", exc) from None
    credentials = _checked(reply, key, subject, ca_pem)
    cred_dir.save(credentials)
    log.info(
        "joined the cluster",
        identity=subject.identity.user,
        master=join_address,
        expires=pki.cert_info(credentials.cert_pem).not_after.isoformat(),
        dir=str(cred_dir.directory),
    )
    return credentials


async def renew(
    master: str,
    current: Credentials,
    subject: Subject,
    addresses: Sequence[str],
    cred_dir: CredentialDir,
    call_timeout: float = _CALL_TIMEOUT,
) -> Credentials:
    """Certificates/Renew on the master's main port with the `current` credentials:
    a certificate for a new key, saved to `cred_dir`."""
    key = pki.make_key()
    request = certificates_pb2.RenewRequest(csr=subject.csr(key), addresses=list(addresses))
    async with rpc.channel(master, credentials=current) as channel:
        stub = certificates_pb2_grpc.CertificatesStub(channel)
        try:
            reply = await stub.Renew(request, timeout=call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(f"renewing the certificate at {master} failed", exc) from None
    credentials = _checked(reply, key, subject, current.ca_pem)
    cred_dir.save(credentials)
    return credentials


# -- lifetime ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lifetime:
    """When a certificate became ours, when it expires, and when to renew it."""

    start: datetime
    not_after: datetime

    @property
    def renew_at(self) -> datetime:
        return self.start + (self.not_after - self.start) * RENEW_AT

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.not_after


def lifetime(cred_dir: CredentialDir) -> Lifetime:
    """The stored certificate's lifetime (see the module's note on its start)."""
    cert = x509.load_pem_x509_certificate(cred_dir.cert.read_bytes())
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    written = datetime.fromtimestamp(os.stat(cred_dir.cert).st_mtime, UTC)
    start = min(max(not_before, written), not_after)
    return Lifetime(start, not_after)


def _stored(cred_dir: CredentialDir, subject: Subject) -> Credentials | None:
    """The stored credentials when they exist, are for `subject` and have not
    expired; None (logged) otherwise."""
    if not cred_dir.exists():
        return None
    try:
        credentials = cred_dir.load()
        info = pki.cert_info(credentials.cert_pem)
        life = lifetime(cred_dir)
    except (OSError, ValueError, pki.PkiError) as exc:
        log.warning("stored credentials unusable; joining again", dir=str(cred_dir.directory),
                    error=str(exc))  # fmt: skip
        return None
    if info.common_name != subject.identity.user:
        log.warning("stored certificate is for another identity; joining again",
                    stored=info.common_name, wanted=subject.identity.user)  # fmt: skip
        return None
    if life.expired():
        log.warning("stored certificate expired; joining again",
                    expired=life.not_after.isoformat())  # fmt: skip
        return None
    return credentials


async def load_or_join(
    cred_dir: CredentialDir,
    *,
    role: str,
    node_name: str,
    join_address: str,
    pin: str,
    token: str,
    addresses: Sequence[str] = (),
) -> Credentials:
    """The credentials in `cred_dir` while they are usable; else join with `token`
    after checking the master's CA against `pin` (BootstrapError naming the flags
    when either is missing)."""
    subject = Subject(role, node_name)
    stored = _stored(cred_dir, subject)
    if stored is not None:
        return stored
    missing = []
    if not token:
        missing.append("a bootstrap token (--token-file FILE or KUBELING_TOKEN)")
    if not pin:
        missing.append(f"{_HASH_FLAG} sha256:...")
    if not join_address:
        missing.append("--join-address HOST:PORT[,HOST:PORT...]")
    if missing:
        raise BootstrapError(
            f"no usable certificate in {cred_dir.directory}; joining needs "
            + " and ".join(missing)
            + " (the master prints the join command; kubeling token create makes a token)"
        )
    ca_pem = await asyncio.to_thread(fetch_ca, join_address, pin)
    return await join(join_address, ca_pem, token, role, node_name, addresses, cred_dir)


# -- renewal loop ------------------------------------------------------------------


class CertificateRenewer:
    """Renews the certificate in `cred_dir` at 80% of its lifetime, for ever: run
    `run` under the process's Supervisor. A failed renewal is retried with back-off
    (logged each time) until it succeeds; `on_renewed` gets the new credentials
    (the kubelet and the proxy switch their client with it)."""

    def __init__(
        self,
        master: str,
        cred_dir: CredentialDir,
        role: str,
        node_name: str,
        addresses: Sequence[str] = (),
        on_renewed: Renewed | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.master = master
        self.cred_dir = cred_dir
        self.subject = Subject(role, node_name)
        self.subject.identity  # noqa: B018 - a wrong role fails here, not at renewal
        self.addresses = list(addresses)
        self.on_renewed = on_renewed
        self._clock = clock
        self.renewals = 0

    def due_in(self) -> float:
        """Seconds until the stored certificate is due for renewal (<= 0: now)."""
        due = lifetime(self.cred_dir).renew_at.timestamp()
        return due - self._clock()

    async def run(self) -> None:
        while True:
            wait = self.due_in()
            if wait > 0:
                await asyncio.sleep(min(wait, _MAX_SLEEP))
                continue
            await self.renew_now()

    async def renew_now(self) -> Credentials:
        """Renew, retrying with back-off until it works."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((BootstrapError, OSError, ValueError, pki.PkiError)),
            wait=wait_exponential(multiplier=1, min=1, max=_MAX_RETRY_WAIT),
            before_sleep=self._failed,
        )
        async for attempt in retrying:
            with attempt:
                current = self.cred_dir.load()
                renewed = await renew(
                    self.master, current, self.subject, self.addresses, self.cred_dir
                )
        self.renewals += 1
        log.info(
            "certificate renewed",
            identity=self.subject.identity.user,
            expires=pki.cert_info(renewed.cert_pem).not_after.isoformat(),
        )
        if self.on_renewed is not None:
            await self.on_renewed(renewed)
        return renewed

    def _failed(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        expires = ""
        try:
            life = lifetime(self.cred_dir)
            expires = life.not_after.isoformat()
            if life.expired():
                expires += (
                    f" (expired: remove {self.cred_dir.directory} and restart with a "
                    "bootstrap token to join again)"
                )
        except (OSError, ValueError):
            pass
        log.error(
            "certificate renewal failed; retrying",
            identity=self.subject.identity.user,
            error=str(error),
            retry_in=round(wait, 1),
            expires=expires,
        )


# -- the command line of kubeling-kubelet and kubeling-proxy ------------------------

TOKEN_ENV = "KUBELING_TOKEN"


class _TokenOnArgv(argparse.Action):
    """A token on the command line is visible to every user through `ps`: refused."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--token is not accepted (a command line is visible to everyone through ps): "
            "put the token in a file readable only by root and pass --token-file FILE, "
            f"or set {TOKEN_ENV}"
        )


def default_cert_dir(component: str) -> Path:
    """/var/lib/kubeling/COMPONENT/pki for root, else under $XDG_DATA_HOME."""
    if os.geteuid() == 0:
        return Path("/var/lib/kubeling") / component / "pki"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kubeling" / component / "pki"


def is_local_target(target: str) -> bool:
    """A unix socket or a loopback HOST:PORT (every one of a list): all that
    plaintext may talk to."""
    if target.startswith("unix:"):
        return True
    if targets.is_list(target):
        try:
            endpoints = targets.parse_list(target)
        except targets.TargetError:
            return False
        return all(is_loopback_address(e.host) for e in endpoints)
    try:
        host, _ = split_address(target)
    except BootstrapError:
        return False
    return is_loopback_address(host)


def add_node_flags(p: argparse.ArgumentParser, component: str) -> None:
    """The master and joining and TLS flags: --master, --token-file (and the refused
    --token), --join-address, --discovery-token-ca-cert-hash, --cert-dir, --insecure."""
    p.add_argument(
        "--master",
        default=os.environ.get("KUBELING_SERVER", "localhost:6443"),
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the master, or several masters of one cluster comma-separated (one is used, "
        "another when it is down; names are resolved at start); default: $KUBELING_SERVER, "
        "localhost:6443",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="a file (mode 0600) holding the bootstrap token to join with "
        f"(kubeling token create); or the environment's {TOKEN_ENV}. Needed only "
        "while --cert-dir holds no valid certificate",
    )
    p.add_argument("--token", action=_TokenOnArgv, help=argparse.SUPPRESS)
    p.add_argument(
        "--join-address",
        default="",
        help="the master's join port, HOST:PORT, or several masters' comma-separated "
        f"(default: --master's hosts, port {JOIN_PORT})",
    )
    p.add_argument(
        _HASH_FLAG,
        dest="ca_cert_hash",
        default="",
        metavar="sha256:HASH",
        help="the cluster CA's pin (the master prints it with the join command); joining "
        "stops before the token is sent if the master's CA differs",
    )
    p.add_argument(
        "--cert-dir",
        type=Path,
        default=default_cert_dir(component),
        help="the certificate, its key and the cluster CA, mode 0600 (default: %(default)s)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS: plaintext to the master and a plaintext API, both only on loopback "
        "or a unix socket",
    )


def finish_node_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, secure_listen: str, insecure_listen: str
) -> argparse.Namespace:
    """Defaults that depend on other flags (--listen, --join-address), and
    --insecure refused beyond this machine."""
    if args.listen is None:
        args.listen = insecure_listen if args.insecure else secure_listen
    try:
        check_addresses("--master", args.master)
        check_addresses("--join-address", args.join_address)
    except BootstrapError as exc:
        p.error(str(exc))
    if args.insecure:
        if not is_local_target(args.master):
            p.error(
                "--insecure talks plaintext, so only to a master on this machine "
                f"(loopback or unix:PATH), not {args.master}"
            )
        wide = [a.strip() for a in args.listen.split(",") if not is_local_target(a.strip())]
        if wide:
            p.error(
                "--insecure serves its API in plaintext, so only on loopback or unix:PATH, "
                f"not {', '.join(wide)} (give --listen {insecure_listen})"
            )
    elif not args.join_address:
        try:
            args.join_address = default_join_address(args.master)
        except BootstrapError as exc:
            p.error(f"--master: {exc}")
    return args


def token_from(args: argparse.Namespace, prog: str) -> str:
    """The bootstrap token from --token-file or $KUBELING_TOKEN ("" when neither);
    SystemExit naming the file when it cannot be read or holds no token."""
    if args.token_file is not None:
        try:
            return read_token_file(args.token_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{prog}: --token-file {args.token_file}: {exc}") from None
    return os.environ.get(TOKEN_ENV, "").strip()


async def connect(
    args: argparse.Namespace,
    prog: str,
    cred_dir: CredentialDir | None,
    role: str,
    node_name: str,
    addresses: Sequence[str] = (),
) -> tuple[Client, CertificateRenewer | None]:
    """The client to the master (`args.master`): with the credentials in
    `cred_dir`, joining first when there are none (SystemExit saying what is
    missing when that cannot be done), and the renewer that keeps them valid and
    switches the client; plaintext without `cred_dir` (--insecure)."""
    token = token_from(args, prog)  # a bad token file fails even when not needed
    if cred_dir is None:
        return Client(args.master), None
    try:
        credentials = await load_or_join(
            cred_dir,
            role=role,
            node_name=node_name,
            join_address=args.join_address,
            pin=args.ca_cert_hash,
            token=token,
            addresses=addresses,
        )
    except BootstrapError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    api = Client(args.master, credentials=credentials)
    renewer = CertificateRenewer(
        args.master, cred_dir, role, node_name, addresses, on_renewed=api.use_credentials
    )
    return api, renewer
