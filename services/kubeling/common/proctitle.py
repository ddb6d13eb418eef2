"""Show a process under its own name in `ps` (e.g. `kubeling-kubelet --master ...`)."""

from __future__ import annotations

import sys

import setproctitle


def set_process_name(name: str) -> None:
    """Replace the interpreter's command line (`python3 .../kubeling-kubelet`) with
    the component's name and its arguments, as `ps` and `top` show it; the kernel's
    short name (`ps -e`, 15 characters) becomes the name's first 15 characters."""
    setproctitle.setproctitle(" ".join([name, *sys.argv[1:]]))
