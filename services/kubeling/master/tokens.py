"""kubeling.v1.Tokens: make, list and delete bootstrap tokens (common/token.py).

The tokens are internal records in the cluster's store (`/bootstraptokens/ID`,
master/codec.py), shared by every master: `StoreTokenRecords` is how
common/token.py's TokenStore reaches them. Create and Delete answer once the
store has the write.

With TLS only admins may (master/authz.py decides, from the caller's certificate).
A master run without TLS (--insecure, loopback only) has no identities: there only
a caller on the master's own machine may, a unix-socket peer or loopback; anyone
else gets PERMISSION_DENIED.
"""

from __future__ import annotations

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api.errors import ApiError
from kubeling.common import handlers, identity
from kubeling.common.handlers import Context
from kubeling.common.peer import is_local
from kubeling.common.token import DEFAULT_TTL, ID_RE, StoredToken, TokenStore
from kubeling.master.authz import Authorizer
from kubeling.master.codec import BOOTSTRAP_TOKENS, internal_key, internal_prefix
from kubeling.master.store.base import KeyExistsError, KeyNotFoundError, Store
from kubeling.v1 import internal_pb2, tokens_pb2

log = structlog.get_logger(__name__)

SERVICE_NAME: str = tokens_pb2.DESCRIPTOR.services_by_name["Tokens"].full_name
_MAX_DESCRIPTION = 256
# Longer is "never" in practice, which is ttl 0, said plainly.
_MAX_TTL = 10 * 365 * 24 * 3600


def local_peer(peer: str) -> bool:
    """Whether grpc's peer string ("unix:...", "ipv4:127.0.0.1:5000",
    "ipv6:%5B::1%5D:5000") is this machine: a unix socket or a loopback address."""
    return is_local(peer)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class StoreTokenRecords:
    """common/token.py's TokenRecords over the cluster's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, token_id: str) -> internal_pb2.BootstrapTokenRecord | None:
        entry = self.store.get(internal_key(BOOTSTRAP_TOKENS, token_id))
        return entry.value if entry is not None else None

    def all(self) -> list[internal_pb2.BootstrapTokenRecord]:
        entries, _ = self.store.list_prefix(internal_prefix(BOOTSTRAP_TOKENS))
        return [e.value for e in entries]

    async def create(self, record: internal_pb2.BootstrapTokenRecord) -> bool:
        try:
            await self.store.create(internal_key(BOOTSTRAP_TOKENS, record.metadata.name), record)
        except KeyExistsError:
            return False
        return True

    async def delete(self, token_id: str) -> bool:
        try:
            await self.store.delete(internal_key(BOOTSTRAP_TOKENS, token_id))
        except KeyNotFoundError:
            return False
        return True

    async def catch_up(self) -> None:
        await self.store.wait_consistent()


class TokensService:
    # How a master makes its TokenStore's records: TokenStore(records_in(store), ...).
    records_in = StoreTokenRecords

    def __init__(self, store: TokenStore | None, local_only: bool = True) -> None:
        """`store` None: this master keeps no tokens, and says so. `local_only`: only
        callers on this machine (a master without TLS, hence without identities)."""
        self.store = store
        self.local_only = local_only

    def handler(self, authz: Authorizer | None = None) -> grpc.GenericRpcHandler:
        methods = {
            "Create": handlers.unary(self.create, tokens_pb2.CreateTokenRequest, "master"),
            "List": handlers.unary(self.list, tokens_pb2.ListTokensRequest, "master"),
            "Delete": handlers.unary(self.delete, tokens_pb2.DeleteTokenRequest, "master"),
        }
        if authz is not None:
            methods = authz.wrap_service(SERVICE_NAME, methods)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    def _allowed(self, context: Context) -> TokenStore:
        peer = str(context.peer())
        if self.local_only and not local_peer(peer):
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"bootstrap tokens are managed only from the master's machine (unix socket or "
                f"loopback), not from {peer}",
            )
        if self.store is None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this master keeps no bootstrap tokens (it was built without a token "
                "store; kubeling-master always has one: --bootstrap-tokens is the default)",
            )
        return self.store

    def _info(self, token: StoredToken, now: float) -> tokens_pb2.BootstrapToken:
        info = tokens_pb2.BootstrapToken(
            id=token.id, description=token.description, created=_timestamp(token.created)
        )
        if token.expires:
            info.expires.CopyFrom(_timestamp(token.expires))
            info.expired = token.expired(now)
        return info

    async def create(
        self, request: tokens_pb2.CreateTokenRequest, context: Context
    ) -> tokens_pb2.CreateTokenResponse:
        store = self._allowed(context)
        ttl = DEFAULT_TTL
        if request.HasField("ttl"):
            ttl = request.ttl.ToNanoseconds() / 1e9
            if not 0 <= ttl <= _MAX_TTL:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "ttl must be between 0 (never expires) and 10 years",
                )
        description = request.description
        if len(description) > _MAX_DESCRIPTION or not description.isprintable():
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"description must be printable and at most {_MAX_DESCRIPTION} characters",
            )
        token, stored = await store.issue(ttl, description)
        log.info("bootstrap token created", id=stored.id, ttl=ttl, peer=_caller(context))
        return tokens_pb2.CreateTokenResponse(token=token, info=self._info(stored, stored.created))

    async def list(
        self, request: tokens_pb2.ListTokensRequest, context: Context
    ) -> tokens_pb2.ListTokensResponse:
        store = self._allowed(context)
        return tokens_pb2.ListTokensResponse(
            tokens=[self._info(t, store.now()) for t in store.list()]
        )

    async def delete(
        self, request: tokens_pb2.DeleteTokenRequest, context: Context
    ) -> tokens_pb2.DeleteTokenResponse:
        store = self._allowed(context)
        # The whole token names its ID too (kubeadm token delete takes either).
        token_id = request.id.partition(".")[0]
        if not ID_RE.match(token_id):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'"{request.id}" is not a token ID ([a-z0-9]{{6}}) or token',
            )
        if not await store.remove(token_id):
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"bootstrap token {token_id} not found")
        log.info("bootstrap token deleted", id=token_id, peer=_caller(context))
        return tokens_pb2.DeleteTokenResponse()


def _caller(context: Context) -> str:
    """Who asked, for the log: the certificate's user with TLS, else the peer."""
    user = identity.identity_of(context) if hasattr(context, "auth_context") else None
    if user is not None and user.authenticated:
        return user.user
    return str(context.peer())
