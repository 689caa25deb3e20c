"""Mesh, fsdp and pmap steps against the single-device step, on 8 fake CPU devices.

The runs happen in a subprocess (tests/train/parallel_worker.py): the device count is fixed when
JAX starts, and this test process already has one CPU device.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    flags = os.environ.get("XLA_FLAGS", "")  # the suite's own (tests/conftest.py) kept
    env = dict(
        os.environ,
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip(),
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.train.parallel_worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT ") :])


@pytest.mark.parametrize("run", ["mesh", "mesh_fsdp2", "mesh_fsdp8", "pmap", "pmap_accum2"])
def test_parallel_steps_match_one_device(report, run):
    r = report[run]
    np.testing.assert_allclose(r["losses"], report["reference_losses"], rtol=2e-6)
    # Adam divides by sqrt(v): summation order moves parameters by ~1e-6 of their scale.
    assert r["max_param_diff"] < 1e-4
    assert r["step"] == 3 and r["param_dtypes"] == ["float32"]


def test_fsdp_shards_parameters_and_plain_mesh_replicates(report):
    assert report["mesh"]["specs"] == ["P()"]
    assert "P('fsdp',)" in report["mesh_fsdp2"]["specs"]
    assert "P('fsdp',)" in report["mesh_fsdp8"]["specs"]
    assert report["pmap"]["specs"] == ["P('devices',)"]  # one replica per device


def test_gradient_accumulation_matches_the_full_batch(report):
    r = report["mesh_accum4"]
    # Micro-batch gradients and losses are summed in another order: the first step's loss (the
    # same parameters, the same terms) is equal up to float32 rounding, a few units in the last
    # place; a wrong split of the batch would move it by far more.
    np.testing.assert_allclose(r["losses"][0], report["reference_losses"][0], rtol=5e-7)
    np.testing.assert_allclose(r["losses"], report["reference_losses"], rtol=1e-5)
    assert r["max_param_diff"] < 1e-3


def test_bfloat16_compute_keeps_float32_parameters_and_tracks_the_loss(report):
    r = report["mesh_bf16"]
    assert r["param_dtypes"] == ["float32"]
    np.testing.assert_allclose(r["losses"], report["reference_losses"], rtol=1e-3)
    assert r["losses"] != report["reference_losses"]  # it did compute in bf16
