"""The seams between kubeling's packages stay clean (DESIGN.md "Seams to keep clean").

Processes meet only through the API and the client: the master does not import
the kubelet or the proxy, the kubelet and the proxy do not import the master, and
what they share lives in `api/` or `common/`. Every module's imports are read
with `ast` (including imports inside functions and under TYPE_CHECKING: they
couple the code just the same), so a new upward import fails here, not in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import kubeling

PACKAGE_ROOT = Path(kubeling.__file__).parent

_PROCESSES = {"master", "kubelet", "proxy"}
_TOOLS = {"cli", "lab"}

# Package -> the kubeling packages it must not import, and why.
FORBIDDEN: dict[str, set[str]] = {
    # The generated messages and the API's vocabulary are the bottom layer.
    "v1": _PROCESSES | _TOOLS | {"api", "common", "client", "controllers", "scheduler", "cri"},
    "api": _PROCESSES | _TOOLS | {"common", "client", "controllers", "scheduler", "cri", "node"},
    # Generated stubs of etcd's API: only the master's etcd store uses them.
    "etcdpb": _PROCESSES
    | _TOOLS
    | {"v1", "api", "common", "client", "controllers", "cri", "node"}
    | {"scheduler"},
    # Shared helpers serve every process, so they may not depend on one.
    "common": _PROCESSES | _TOOLS | {"client", "controllers", "scheduler", "cri", "node"},
    "client": _PROCESSES | _TOOLS | {"controllers", "scheduler", "cri", "node"},
    "cri": _PROCESSES | _TOOLS | {"client", "controllers", "scheduler"},
    "node": _PROCESSES | _TOOLS | {"client", "controllers", "scheduler"},
    # The processes meet only through the API and the client.
    "master": {"kubelet", "proxy"} | _TOOLS,
    "kubelet": {"master", "proxy", "controllers", "scheduler"} | _TOOLS,
    "proxy": {"master", "kubelet", "controllers", "scheduler"} | _TOOLS,
    "dns": {"master", "kubelet", "proxy", "controllers", "scheduler", "cri", "node"} | _TOOLS,
    # Controllers and the scheduler are API clients the master happens to host.
    "controllers": _PROCESSES | _TOOLS | {"scheduler"},
    "scheduler": _PROCESSES | _TOOLS,
    "lab": _PROCESSES | {"cli"},
    # The command line is the top: it may use any package.
    "cli": set(),
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                # `from . import x` in a package's __init__ is relative to the package itself.
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from kubeling import master` names a package too.
            if node.module is None or base == "kubeling":
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"
            else:
                yield node.lineno, base


def upward_imports(root: Path) -> list[str]:
    """Every forbidden edge under the package at `root`, as 'file:line: a -> b'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        parts = module.split(".")
        if len(parts) < 2:
            continue
        source_package = parts[1]
        forbidden = FORBIDDEN.get(source_package, set())
        for line, name in imported_modules(
            path.read_text(), module, is_package=path.name == "__init__.py"
        ):
            target = name.split(".")
            if len(target) > 1 and target[0] == root.name and target[1] in forbidden:
                where = path.relative_to(root.parent)
                found.append(f"{where}:{line}: {source_package} -> {target[1]} ({name})")
    return found


def test_no_upward_imports() -> None:
    assert upward_imports(PACKAGE_ROOT) == []


def test_every_package_has_a_row() -> None:
    # A new package must say what it may not import; otherwise it is not checked.
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages - set(FORBIDDEN) == set()


def _package_with(tmp_path: Path, relative: str, source: str) -> Path:
    """A `kubeling` tree holding one module, `relative`, with `source`."""
    root = tmp_path / "kubeling"
    path = root / relative
    path.parent.mkdir(parents=True)
    path.write_text(source)
    return root


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("kubelet/kubelet.py", "from kubeling.master.registry import INITIAL_EVENTS_END\n"),
        ("proxy/main.py", "from kubeling.kubelet import machine\n"),
        ("master/main.py", "import kubeling.kubelet.machine\n"),
        ("master/main.py", "from kubeling import proxy\n"),
        ("common/util.py", "def f() -> None:\n    from kubeling.client import Client\n"),
        ("kubelet/steps/__init__.py", "from ...master import registry\n"),
        ("proxy/rules.py", "from ..kubelet.machine import hostname\n"),
    ],
)
def test_checker_finds_upward_imports(tmp_path: Path, relative: str, source: str) -> None:
    (found,) = upward_imports(_package_with(tmp_path, relative, source))
    assert found.startswith(f"kubeling/{relative}:")


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("kubelet/kubelet.py", "from kubeling.api.wellknown import INITIAL_EVENTS_END\n"),
        ("proxy/main.py", "from kubeling.common import machine\n"),
        ("master/main.py", "from kubeling.controllers.manager import ControllerSettings\n"),
        ("kubelet/steps/__init__.py", "from .. import sync\nfrom . import base\n"),
    ],
)
def test_checker_allows_imports_down_and_within(tmp_path: Path, relative: str, source: str) -> None:
    assert upward_imports(_package_with(tmp_path, relative, source)) == []
