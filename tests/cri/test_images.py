"""The fake's image names and its registry (what test_contract.py cannot reach on
containerd here: there is no registry)."""

from __future__ import annotations

import pytest

from kubeling.cri.errors import CRIError
from kubeling.cri.fake import normalize_image
from kubeling.cri.runtime import Runtime


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("me/app", "docker.io/me/app:latest"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("localhost/app:v1", "localhost/app:v1"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("app@sha256:abc", "docker.io/library/app@sha256:abc"),
    ],
)
def test_normalize_image(ref: str, normal: str) -> None:
    assert normalize_image(ref) == normal


async def test_pull_status_list_remove(runtime: Runtime) -> None:
    assert await runtime.image_status("nginx:1.25") is None
    image_ref = await runtime.pull_image("nginx:1.25")
    assert image_ref.startswith("sha256:")
    assert await runtime.pull_image("docker.io/library/nginx:1.25") == image_ref

    for ref in ("nginx:1.25", image_ref, image_ref.removeprefix("sha256:")):
        image = await runtime.image_status(ref)
        assert image is not None and image.id == image_ref
    image = await runtime.image_status("nginx:1.25")
    assert image is not None
    assert list(image.repo_tags) == ["docker.io/library/nginx:1.25"]
    (digest,) = image.repo_digests
    assert digest.startswith("docker.io/library/nginx@sha256:")
    found = await runtime.image_status(digest)
    assert found is not None and found.id == image_ref
    assert image.size > 0

    listed = {i.id for i in await runtime.list_images()}
    assert image_ref in listed and len(listed) == 2  # busybox was preloaded
    # Present from the start is like imported: tags only, until pulled.
    busybox = await runtime.image_status("busybox")
    assert busybox is not None and busybox.repo_digests == []
    assert await runtime.pull_image("busybox") == busybox.id
    pulled = await runtime.image_status("busybox")
    assert pulled is not None and pulled.repo_digests[0].startswith("docker.io/library/busybox@")

    await runtime.remove_image("nginx:1.25")
    await runtime.remove_image("nginx:1.25")  # idempotent
    assert await runtime.image_status(image_ref) is None
    assert await runtime.image_status(digest) is None


async def test_missing_image_cannot_be_pulled(runtime: Runtime) -> None:
    with pytest.raises(CRIError) as err:
        await runtime.pull_image("nope")
    assert err.value.not_found
    assert "docker.io/library/nope:latest" in err.value.details
