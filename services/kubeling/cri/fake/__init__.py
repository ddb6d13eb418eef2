"""An in-memory CRI runtime for tests and hollow nodes, in three parts:

- ``behaviour``: the language a fake container's spec speaks (``FAKE_RUN_FOR=2s``,
  ``FAKE_EXIT_CODE=3``, ``FAKE_START_ERROR=...``, ``FAKE_IGNORE_SIGTERM=1``, ...);
- ``state`` and ``runtime``: sandboxes, containers and images and their state
  transitions (``FakeRuntime``, the ``Runtime`` protocol without sockets);
- ``server``: the gRPC adapter (``FakeCRIServer``).

tests/cri runs one contract suite against this fake and a real containerd, so the
fake cannot drift from what it imitates.
"""

from kubeling.cri.fake.behaviour import Behaviour, parse_behaviour, parse_duration
from kubeling.cri.fake.runtime import SANDBOX_ERROR_ANNOTATION, FakeRuntime
from kubeling.cri.fake.server import FakeCRIServer
from kubeling.cri.fake.state import normalize_image

__all__ = [
    "SANDBOX_ERROR_ANNOTATION",
    "Behaviour",
    "FakeCRIServer",
    "FakeRuntime",
    "normalize_image",
    "parse_behaviour",
    "parse_duration",
]
