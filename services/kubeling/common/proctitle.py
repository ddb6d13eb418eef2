"""Show a process under its own name in `ps` (e.g. `kubeling-kubelet`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Set the kernel's comm name (what `ps -e` and `pgrep` show); argv[0] is
    already the console script's name."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
