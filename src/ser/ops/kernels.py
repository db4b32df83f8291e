"""Numeric kernels pinned for the pipeline's stages, so that a stage computes the same numbers
on any x86-64-v3 processor (AVX2 and FMA: Intel since Haswell, AMD since Zen).

numpy, OpenBLAS, oneDNN and TensorFlow pick their kernels when they load, by the processor's
instruction sets and its number of cores, and two kernels that add the same numbers in
another order round differently: numpy's AVX-512 ``log10`` and ``arctan2`` differ from its
AVX2 ones in the last bit, which moved a trim boundary or a pitch-shifted copy and so
``features.parquet``; training then grows such bits into another model. ``pin_numeric_kernels``
sets, before numpy loads, the variables each library reads:

- numpy: its loops for targets above AVX2 (``X86_V3``) off, so AVX-512 machines run the
  AVX2 loops every x86-64-v3 machine has;
- OpenBLAS: one thread, and its Haswell kernels unless the environment names a core type:
  some processors need one of their own, so ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE``
  set by the environment are never overridden;
- oneDNN: on (TensorFlow turns it on by default only where the processor has VNNI or AMX),
  at most AVX2;
- TensorFlow: ``TENSORFLOW_THREADS`` threads per operation, whatever the number of cores
  (how an operation splits a sum between threads follows their number).

docs/reproducibility.md says what each pin costs and what stays machine-dependent.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

NUMPY_TARGETS_ABOVE_V3 = ("X86_V4", "AVX512_ICL", "AVX512_SPR")
"""numpy's run-time dispatch targets above ``X86_V3`` (``__cpu_dispatch__`` of numpy 2.4);
tests/ops/test_kernels.py checks them against the installed numpy."""
X86_64_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "abm", "f16c", "movbe"})
"""What numpy's ``X86_V3`` target needs beyond x86-64-v2, as /proc/cpuinfo names it."""
BLAS_CORE_TYPE = "Haswell"
"""OpenBLAS's AVX2 + FMA kernels: present on every x86-64-v3 processor."""
TENSORFLOW_THREADS = 2


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The processor's feature flags as Linux lists them; empty where there is no such file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags = next((line for line in text.splitlines() if line.startswith("flags")), ":")
    return frozenset(flags.split(":", 1)[1].split())


def pinned_environment(environ: Mapping[str, str], flags: frozenset[str]) -> dict[str, str]:
    """The variables to set over ``environ`` on a processor with ``flags``.

    A feature list already disabled for numpy is kept and extended; OpenBLAS gets its
    Haswell kernels only when the environment names no core type and the processor has them.
    """
    disabled = environ.get("NPY_DISABLE_CPU_FEATURES", "").replace(",", " ").split()
    pinned = {
        "NPY_DISABLE_CPU_FEATURES": " ".join(dict.fromkeys([*disabled, *NUMPY_TARGETS_ABOVE_V3])),
        "OPENBLAS_NUM_THREADS": "1",
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "TF_NUM_INTRAOP_THREADS": str(TENSORFLOW_THREADS),
    }
    if "OPENBLAS_CORETYPE" not in environ and X86_64_V3.issubset(flags):
        pinned["OPENBLAS_CORETYPE"] = BLAS_CORE_TYPE
    return pinned


def pin_numeric_kernels() -> bool:
    """Pin the kernels in this process's environment, which its workers inherit.

    True when they are pinned, already (by an earlier stage in this process, or by the
    parent process) or now; False, changing nothing, when numpy was loaded before they were:
    it read its variable then.
    """
    flags = cpu_flags()
    pinned = pinned_environment(os.environ, flags)
    if all(os.environ.get(name) == value for name, value in pinned.items()):
        return True
    if "numpy" in sys.modules:
        log.warning(
            "numpy was loaded before the kernels were pinned: results may differ by machine"
        )
        return False
    if flags and not X86_64_V3.issubset(flags):
        log.warning(
            "this processor lacks x86-64-v3 features %s: results will differ from those of "
            "x86-64-v3 machines",
            " ".join(sorted(X86_64_V3 - flags)),
        )
    os.environ.update(pinned)
    log.debug("numeric kernels: %s", ", ".join(f"{k}={v}" for k, v in pinned.items()))
    return True


def numpy_targets() -> str:
    """The run-time dispatch targets numpy uses in this process (``X86_V3`` when pinned on an
    x86-64-v3 machine): part of every cached result that numpy's loops computed."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(target for target in __cpu_dispatch__ if __cpu_features__.get(target))
