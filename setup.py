"""Build hook: compile protos/ into the kubeling.v1 and kubeling.etcdpb packages.

Generated code lives in services/kubeling/v1/ and etcdpb/ (git-ignored) and is never edited by
hand; a fresh clone gets it from `pip install .` or `make proto`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "services"


def compile_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
    ]
    # Typed stubs are a development aid: made when mypy-protobuf is installed.
    for plugin, flag in (
        ("protoc-gen-mypy", "mypy_out"),
        ("protoc-gen-mypy_grpc", "mypy_grpc_out"),
    ):
        path = shutil.which(plugin) or shutil.which(plugin, path=str(Path(sys.executable).parent))
        if path:
            args += [f"--plugin={plugin}={path}", f"--{flag}={OUT_DIR}"]
    if protoc.main([*args, *sources]) != 0:
        sys.exit("protoc failed")
    for package in {(OUT_DIR / s).parent for s in sources}:
        (package / "__init__.py").touch()


class BuildProtos(Command):
    description = "compile protos/ into services/kubeling/v1"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        compile_protos()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        for package in ("kubeling.v1", "kubeling.etcdpb"):
            if package not in (self.packages or []):
                self.packages = [*(self.packages or []), package]
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos, "build_protos": BuildProtos})
