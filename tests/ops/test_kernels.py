"""Pinned numeric kernels: what is set, what the environment keeps, and what a pinned process
runs. The stages' outputs under two kernel settings: tests/test_reproducibility.py."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
from conftest import PROJECT_ROOT, project_env, run

from ser.ops import kernels
from ser.ops.kernels import (
    NUMPY_TARGETS_ABOVE_V3,
    X86_64_V3,
    cpu_flags,
    numpy_targets,
    pin_numeric_kernels,
    pinned_environment,
)

V3_PROCESSOR = X86_64_V3 | {"sse4_2", "avx512f"}
MACHINE_IS_V3 = X86_64_V3.issubset(cpu_flags())


def test_the_pins_cap_numpy_and_onednn_at_avx2_and_fix_the_threads():
    assert pinned_environment({}, V3_PROCESSOR) == {
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "OPENBLAS_NUM_THREADS": "1",
        "OPENBLAS_CORETYPE": "Haswell",
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "TF_NUM_INTRAOP_THREADS": "2",
    }


def test_an_openblas_core_type_or_cache_size_from_the_environment_is_kept():
    environ = {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": "524288"}
    pinned = pinned_environment(environ, V3_PROCESSOR)
    assert "OPENBLAS_CORETYPE" not in pinned and "OPENBLAS_L2_SIZE" not in pinned


def test_a_processor_without_avx2_gets_no_haswell_kernels():
    assert "OPENBLAS_CORETYPE" not in pinned_environment({}, V3_PROCESSOR - {"avx2"})
    assert "OPENBLAS_CORETYPE" not in pinned_environment({}, frozenset())  # flags unknown


def test_numpy_features_the_environment_disables_stay_disabled():
    pinned = pinned_environment({"NPY_DISABLE_CPU_FEATURES": "AVX512_SPR,X86_V3"}, V3_PROCESSOR)
    assert pinned["NPY_DISABLE_CPU_FEATURES"] == "AVX512_SPR X86_V3 X86_V4 AVX512_ICL"


def test_the_disabled_targets_are_every_numpy_target_above_avx2():
    from numpy._core._multiarray_umath import __cpu_dispatch__

    assert "X86_V3" in __cpu_dispatch__
    assert set(__cpu_dispatch__) - {"X86_V3"} == set(NUMPY_TARGETS_ABOVE_V3)


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_pinning_after_numpy_loaded_changes_nothing_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    before = dict(os.environ)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert pin_numeric_kernels() is False
    assert dict(os.environ) == before
    assert "numpy was loaded before the kernels were pinned" in caplog.text


def test_an_already_pinned_environment_counts_as_pinned(monkeypatch):
    for name, value in pinned_environment(os.environ, cpu_flags()).items():
        monkeypatch.setenv(name, value)
    assert pin_numeric_kernels() is True


PROBE = """
import json
from ser.ops.kernels import pin_numeric_kernels, numpy_targets
pinned = pin_numeric_kernels()
import numpy, scipy.linalg  # the OpenBLAS of each: sklearn calls both
from threadpoolctl import threadpool_info
blas = [(i["architecture"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"pinned": pinned, "numpy": numpy_targets(), "blas": blas}))
"""


@pytest.mark.skipif(not MACHINE_IS_V3, reason="the pins target x86-64-v3 processors")
def test_a_pinned_process_runs_avx2_loops_and_one_blas_thread():
    env = project_env(PROJECT_ROOT)
    for name in ("NPY_DISABLE_CPU_FEATURES", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)
    probe = json.loads(run([sys.executable, "-c", PROBE], PROJECT_ROOT, env=env).stdout)
    assert probe["pinned"] is True
    assert probe["numpy"] == "X86_V3"
    core_type = os.environ.get("OPENBLAS_CORETYPE", "Haswell")  # the environment's, if any
    assert {(name.lower(), threads) for name, threads in probe["blas"]} == {(core_type.lower(), 1)}


def test_the_cli_loads_no_numeric_library_before_a_stage_pins_them():
    code = "import sys, ser.cli; print(sorted({'numpy', 'tensorflow'} & set(sys.modules)))"
    result = run([sys.executable, "-c", code], PROJECT_ROOT, env=project_env(PROJECT_ROOT))
    assert result.stdout.strip() == "[]"


def test_numpy_targets_name_what_this_process_runs():
    from numpy._core._multiarray_umath import __cpu_features__

    targets = numpy_targets().split()
    assert all(__cpu_features__[target] for target in targets)
