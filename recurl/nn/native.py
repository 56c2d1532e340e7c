"""recurl's one compiled kernel: the GRU's time loops (``gru_kernel.c``), built on first use.

PyTorch has no fused CPU GRU, and a time loop written with torch ops costs one dispatch per op per step
(the fused-op loop of :class:`~recurl.nn.recurrent._FusedGRU` still spends most of its time there). The
C loops run all ``T`` steps of the recurrence in one call. They are compiled once per machine with the
system's C compiler (``cc -O3 -march=native``, about a second) into a cache directory
(``$RECURL_CACHE_DIR``, default ``~/.cache/recurl``), keyed by the source, the flags and the CPU, and
loaded with :mod:`ctypes`. Without a compiler (or if the build fails) :func:`gru_kernel` returns ``None``
and the GRU keeps its torch-op loop: same math, slower. ``RECURL_NATIVE=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from recurl.checkpoint import atomic_write

SOURCE = Path(__file__).with_name("gru_kernel.c")
FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")
#: why the kernel is not in use, when it is not (benchmarks report it)
unavailable_reason = ""


def _cpu_id() -> str:
    """The CPU's model and feature flags: a ``-march=native`` build is only valid on the same kind of CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _build(cache: Path) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    lib = cache / f"gru_kernel_{key}.so"
    if lib.is_file():
        return lib
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    # built aside and renamed into place: another process never loads a half-written library
    atomic_write(lib, lambda tmp: subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True,
                                                 capture_output=True, timeout=120))
    return lib


@functools.cache
def gru_kernel() -> ctypes.CDLL | None:
    """The loaded kernel with ``gru_forward`` and ``gru_backward`` (see ``gru_kernel.c``), or ``None``."""
    global unavailable_reason
    if os.environ.get("RECURL_NATIVE", "1") == "0":
        unavailable_reason = "RECURL_NATIVE=0"
        return None
    cache = Path(os.environ.get("RECURL_CACHE_DIR") or Path.home() / ".cache" / "recurl")
    try:
        lib = ctypes.CDLL(str(_build(cache)))
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", b"") or b""
        unavailable_reason = f"{type(e).__name__}: {e} {err.decode(errors='replace')[:500]}".strip()
        return None
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.gru_forward.argtypes = [i, i, i] + [p] * 11
    lib.gru_backward.argtypes = [i, i, i] + [p] * 12
    lib.gru_forward.restype = lib.gru_backward.restype = None
    return lib
