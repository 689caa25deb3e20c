"""vmjax.tools.summary against hand-counted parameters and FLOPs."""

import subprocess
import sys

import pytest

from tests.train.test_loop import ROOT, get_config
from vmjax.tools.summary import summarize


def test_moe_params_and_flops_by_hand():
    c = get_config("")
    c.model.num_mixtures = 2
    result = summarize(c)
    d, classes, m = 1024 + 128, 3862, 2
    gates = d * classes * (m + 1)  # no bias (starter)
    experts = d * classes * m + classes * m
    assert result["modules"] == {"head": gates + experts}
    assert result["params"] == gates + experts
    # Two matmuls dominate: 2 * d * classes * (2m + 1) multiply-adds.
    assert result["flops_per_example"] == pytest.approx(2 * d * classes * (2 * m + 1), rel=0.05)


def test_frame_moe_with_one_mixture():
    c = get_config("frame")
    c.model.name = "frame_moe"
    c.model.num_mixtures = 1
    c.data.max_frames = 10
    result = summarize(c)
    assert result["params"] == 1152 * 3862 * 2 + (1152 * 3862 + 3862)  # gates + experts


def test_cli_prints_params_last():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmjax.tools.summary",
            "--config",
            "configs/yt8m.py",
            "--config.model.name=logistic",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == f"params {1152 * 3862 + 3862}"
    assert any(line.startswith("flops_per_example") for line in lines)
