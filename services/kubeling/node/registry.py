"""Push OCI image archives to a registry over the Docker Registry HTTP API v2.

The archives are the OCI image layouts packed in a tar that kubeling.node.images
writes. Each name in the layout's index.json (``docker.io/library/busybox:latest``)
becomes a repository and tag on the target registry with the registry host dropped
(``library/busybox:latest``), which is where containerd looks when the registry is
configured as a mirror of ``docker.io`` in a hosts.toml.

The protocol, per repository:

* each blob (layers, then config): ``HEAD /v2/REPO/blobs/DIGEST``; when missing,
  ``POST /v2/REPO/blobs/uploads/`` and ``PUT LOCATION?digest=DIGEST`` with the bytes
  (a monolithic upload);
* the manifest: ``PUT /v2/REPO/manifests/TAG`` with its own media type, once per tag.
  An index (manifest list) would go the same way after its manifests; the archives
  made here hold one single-platform manifest, so none is needed.

Plain HTTP is used only for loopback addresses and networks the caller names (the
lab's private network, which has no route off the machine); any other registry is
spoken to over HTTPS with the system's CAs. Authentication is not supported: a 401
is reported as such.

It uses urllib (synchronous): callers are the lab, itself synchronous, and the CLI,
which runs it in a thread.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeling.node.images import ANNOTATION_CONTAINERD_NAME, MEDIA_INDEX, MEDIA_MANIFEST

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (MEDIA_MANIFEST, MEDIA_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST)
_INDEX_TYPES = (MEDIA_INDEX, MEDIA_DOCKER_LIST)

TIMEOUT = 60.0


class RegistryError(RuntimeError):
    """A registry request failed, or an archive cannot be pushed."""


@dataclass(frozen=True)
class Reference:
    """An image name split the way a registry sees it."""

    repository: str  # "library/busybox"
    tag: str  # "latest"


def parse_reference(name: str) -> Reference:
    """`docker.io/library/busybox:1.35.0`, `busybox` or `localhost/kubeling/pause:1.0`
    -> repository and tag, without the registry host (the target replaces it)."""
    if "@" in name:
        raise RegistryError(f"{name}: push by digest is not supported; give a tag")
    path, tag = name, "latest"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    parts = path.split("/")
    # The first part is a registry host when it looks like one (Docker's rule).
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["library", *parts]  # Docker Hub's official images
    repository = "/".join(parts)
    if not all(p and p == p.lower() for p in parts) or not tag:
        raise RegistryError(f"{name}: not a valid image name")
    return Reference(repository, tag)


def registry_base_url(
    registry: str, plain_http_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
) -> str:
    """http://HOST:PORT for loopback and the given (private lab) networks, else https."""
    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    plain = host == "localhost"
    try:
        address = ipaddress.ip_address(host)
        plain = plain or address.is_loopback or any(address in n for n in plain_http_networks)
    except ValueError:
        pass
    return f"{'http' if plain else 'https'}://{registry}"


@dataclass(frozen=True)
class OciArchive:
    """An OCI image layout read from a tar: its blobs and index.json."""

    blobs: dict[str, bytes]
    index: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> OciArchive:
        blobs: dict[str, bytes] = {}
        index: dict[str, Any] | None = None
        try:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    name = member.name.removeprefix("./")
                    data = tar.extractfile(member)
                    assert data is not None  # a regular file
                    if name == "index.json":
                        index = json.loads(data.read())
                    elif name.startswith("blobs/"):
                        algorithm, _, hexdigest = name.removeprefix("blobs/").partition("/")
                        blobs[f"{algorithm}:{hexdigest}"] = data.read()
        except (OSError, tarfile.TarError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: not a readable OCI image archive: {exc}") from exc
        if index is None:
            raise RegistryError(f"{path}: no index.json (not an OCI image layout)")
        return cls(blobs, index)

    def blob(self, digest: str) -> bytes:
        try:
            return self.blobs[digest]
        except KeyError:
            raise RegistryError(f"the archive lacks blob {digest}") from None

    def tagged(self) -> list[tuple[str, dict[str, Any]]]:
        """(image name, manifest descriptor) for each named entry of index.json."""
        out = []
        for desc in self.index.get("manifests", []):
            name = desc.get("annotations", {}).get(ANNOTATION_CONTAINERD_NAME)
            if name:
                out.append((str(name), desc))
        return out


@dataclass(frozen=True)
class PushResult:
    reference: str  # REGISTRY/REPO:TAG
    digest: str  # of the manifest (or index) the tag points to
    blobs_uploaded: int
    blobs_skipped: int


class RegistryClient:
    """The few Registry API v2 calls a push (and a listing) needs."""

    def __init__(self, registry: str, base_url: str, timeout: float = TIMEOUT) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, str], bytes]:
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, reply_headers, data = (
                    response.status,
                    dict(response.headers),
                    response.read(),
                )
        except urllib.error.HTTPError as exc:
            status, reply_headers, data = exc.code, dict(exc.headers), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"registry {self.registry}: {method} {url}: {reason}") from exc
        if status not in ok:
            if status == 401:
                raise RegistryError(
                    f"registry {self.registry}: {method} {url}: 401 unauthorized "
                    "(registries that need a login are not supported)"
                )
            detail = data.decode(errors="replace").strip()[:300]
            raise RegistryError(f"registry {self.registry}: {method} {url}: {status} {detail}")
        return status, reply_headers, data

    def check(self) -> None:
        """GET /v2/: the registry answers the v2 API."""
        self._request("GET", "/v2/")

    def has_blob(self, repository: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", ok=(200, 404))
        return status == 200

    def upload_blob(self, repository: str, digest: str, data: bytes) -> None:
        _, headers, _ = self._request(
            "POST", f"/v2/{repository}/blobs/uploads/", body=b"", ok=(202,)
        )
        location = headers.get("Location") or headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.registry}: upload started without a Location")
        # Location may be relative and may carry its own query (the upload state).
        location = urllib.parse.urljoin(self.base_url + "/", location)
        sep = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            ok=(201,),
        )

    def put_manifest(self, repository: str, tag: str, media_type: str, data: bytes) -> str:
        _, headers, _ = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            body=data,
            headers={"Content-Type": media_type},
            ok=(201,),
        )
        return headers.get("Docker-Content-Digest", "")

    def get_manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """(media type, bytes) of a manifest, as a pulling runtime would ask for it."""
        _, headers, data = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        )
        return headers.get("Content-Type", ""), data

    def catalog(self) -> list[str]:
        _, _, data = self._request("GET", "/v2/_catalog?n=1000")
        return list(json.loads(data).get("repositories") or [])

    def tags(self, repository: str) -> list[str]:
        _, _, data = self._request("GET", f"/v2/{repository}/tags/list")
        return sorted(json.loads(data).get("tags") or [])


def _push_manifest_tree(
    client: RegistryClient,
    archive: OciArchive,
    repository: str,
    desc: dict[str, Any],
    counts: list[int],
    reference: str,
) -> None:
    """Push a manifest's blobs then the manifest itself under `reference` (a tag, or
    the digest for an index's children); an index pushes its manifests first."""
    digest = str(desc["digest"])
    data = archive.blob(digest)
    media_type = str(desc.get("mediaType") or json.loads(data).get("mediaType") or MEDIA_MANIFEST)
    if media_type in _INDEX_TYPES:
        for child in json.loads(data).get("manifests", []):
            _push_manifest_tree(client, archive, repository, child, counts, str(child["digest"]))
    else:
        manifest = json.loads(data)
        for blob in [*manifest.get("layers", []), manifest["config"]]:
            blob_digest = str(blob["digest"])
            if client.has_blob(repository, blob_digest):
                counts[1] += 1
                continue
            client.upload_blob(repository, blob_digest, archive.blob(blob_digest))
            counts[0] += 1
    pushed = client.put_manifest(repository, reference, media_type, data)
    if pushed and pushed != digest:
        raise RegistryError(
            f"registry {client.registry}: stored {repository}:{reference} as {pushed}, "
            f"expected {digest}"
        )


def push_archive(
    path: Path,
    registry: str,
    *,
    plain_http_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    names: Iterable[str] | None = None,
    timeout: float = TIMEOUT,
) -> list[PushResult]:
    """Push every named image of an OCI archive (or only `names`) to `registry`
    (HOST:PORT). Blobs the registry has are not sent again."""
    archive = OciArchive.read(path)
    client = RegistryClient(registry, registry_base_url(registry, plain_http_networks), timeout)
    client.check()
    wanted = set(names) if names is not None else None
    results: list[PushResult] = []
    for name, desc in archive.tagged():
        if wanted is not None and name not in wanted:
            continue
        ref = parse_reference(name)
        counts = [0, 0]
        _push_manifest_tree(client, archive, ref.repository, desc, counts, ref.tag)
        results.append(
            PushResult(f"{registry}/{ref.repository}:{ref.tag}", str(desc["digest"]), *counts)
        )
    if not results:
        raise RegistryError(f"{path}: no image names to push in its index.json")
    return results


REGISTRY_BINARY = "/usr/bin/docker-registry"


def write_registry_config(path: Path, *, addr: str, root: Path) -> Path:
    """A minimal config.yml for Debian's docker-registry (distribution 2.8): files
    under `root`, plain HTTP on `addr`, no auth (its callers keep it on loopback or a
    private network)."""
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: info\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {json.dumps(str(root))}\n"
        "http:\n"
        f"  addr: {json.dumps(addr)}\n"
    )
    return path


def wait_ready(registry: str, base_url: str, timeout: float) -> None:
    """Until GET /v2/ answers (a registry that was just started)."""
    client = RegistryClient(registry, base_url, timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.check()
            return
        except RegistryError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kubeling.node.registry push --registry HOST:PORT ARCHIVE...`: what
    the lab runs inside its network namespace (the host has no route to it)."""
    parser = argparse.ArgumentParser(prog="python -m kubeling.node.registry")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="push OCI archives to a registry")
    push.add_argument("archives", nargs="+", type=Path)
    push.add_argument("--registry", required=True, metavar="HOST:PORT")
    push.add_argument(
        "--plain-http-network",
        action="append",
        default=[],
        type=ipaddress.ip_network,
        help="a (private) network whose registries speak plain HTTP; loopback always does",
    )
    push.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the registry")
    args = parser.parse_args(argv)
    try:
        if args.wait:
            base = registry_base_url(args.registry, args.plain_http_network)
            wait_ready(args.registry, base, args.wait)
        for archive in args.archives:
            for result in push_archive(
                archive, args.registry, plain_http_networks=args.plain_http_network
            ):
                print(
                    f"pushed {result.reference} {result.digest} "
                    f"({result.blobs_uploaded} uploaded, {result.blobs_skipped} present)"
                )
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
