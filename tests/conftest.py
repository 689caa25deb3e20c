"""Test-session settings that make XLA compile less: one persistent cache, a cheaper backend.

Most of the suite's time is XLA compiling tiny models' steps, not running them.

1. One JAX persistent compilation cache for the whole session.

Many tests run `python -m vmjax.main` (or another command) in a subprocess on the same tiny
configs, and each of those processes compiles the same train and eval steps again. The
controller creates a fresh cache directory for the session and puts it in the environment,
which the xdist workers and every subprocess they start inherit; the controller removes it at
the end. A fresh directory per session keeps timings reproducible (nothing carried over from an
earlier run); a test that sets its own JAX_COMPILATION_CACHE_DIR keeps it, and
VMJAX_TEST_JAX_CACHE=0 switches the session cache off.

2. XLA:CPU's LLVM backend at optimization level 0 (`--xla_backend_optimization_level=0`
   appended to XLA_FLAGS): about a third less compile time for the same programs; the HLO
   optimization passes (fusion, layout, algebraic simplification) still run, only the machine
   code is less tuned (results may differ in the last bit), which costs nothing at test sizes.
   VMJAX_TEST_FAST_COMPILE=0 switches it off (run the suite with the backend users get).
   Multi-device tests append their --xla_force_host_platform_device_count to these flags for
   their subprocesses.
"""

import os
import shutil
import tempfile

_CACHE = "JAX_COMPILATION_CACHE_DIR"
_OWNER = "VMJAX_TEST_JAX_CACHE_OWNER"


_FAST = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    if os.environ.get("VMJAX_TEST_FAST_COMPILE") != "0":
        flags = os.environ.get("XLA_FLAGS", "")
        if _FAST not in flags:  # an xdist worker inherits the controller's flags
            os.environ["XLA_FLAGS"] = f"{flags} {_FAST}".strip()
    if os.environ.get(_CACHE) or os.environ.get("VMJAX_TEST_JAX_CACHE") == "0":
        return  # an xdist worker (inherited), the user's own cache, or switched off
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="vmjax-test-jax-cache-")
    os.environ[_OWNER] = str(os.getpid())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if os.environ.get(_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ.pop(_CACHE), ignore_errors=True)
        os.environ.pop(_OWNER, None)
