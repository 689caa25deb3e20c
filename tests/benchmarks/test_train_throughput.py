"""benchmarks/train_throughput.py on the logistic model: its numbers parse, and its FLOPs per
example agree with a hand count."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
D, C, B = 1024 + 128, 3862, 64  # logistic: one Dense [D -> C] on video-level rgb + audio
PARAMS = D * C + C


def _run(devices: int) -> dict[str, str]:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_throughput.py",
            "--config",
            "configs/yt8m.py:smoke",
            "--config.model.name=logistic",
            f"--config.batch_size={B}",
            "--steps",
            "3",
            "--warmup",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


@pytest.mark.parametrize("devices", [1, 2])
def test_logistic_throughput_and_flops_by_hand(devices):
    values = _run(devices)
    for key in (
        "examples_per_s",
        "examples_per_s_per_device",
        "step_ms",
        "flops_per_example",
        "flops_per_s",
    ):
        assert float(values[key]) > 0, key
    assert int(values["device_count"]) == devices
    assert int(values["params"]) == PARAMS
    assert values["dtype"] == "float32" and values["parallelism"] == "mesh"
    assert int(values["batch_size"]) == B
    assert float(values["examples_per_s"]) == pytest.approx(
        float(values["examples_per_s_per_device"]) * devices, rel=1e-3
    )
    assert values["mfu"].startswith("n/a")

    # The step's two matmuls: logits = x W (2DC per example) and dW = x^T dlogits (2DC); no
    # gradient flows into the data. Everything else is cheap: sigmoid cross-entropy (a few ops
    # per logit) and clipping + AdamW, ~25 ops per parameter per step in optax (measured), which
    # XLA counts on every device (the parameters are replicated). The bounds allow 100 of each,
    # and still tell the step apart from a forward only (2DC + optimizer < 4DC), a per-step count
    # (x64) and one device's share of the batch (x1/2).
    assert values["flops_source"] == "xla_train_step"
    flops = float(values["flops_per_example"])
    assert 4 * D * C <= flops <= 4 * D * C + devices * 100 * PARAMS / B + 100 * C
    assert float(values["flops_per_example_3x_forward"]) == pytest.approx(3 * 2 * D * C, rel=0.01)
    assert float(values["flops_per_s"]) == pytest.approx(
        flops * float(values["examples_per_s"]), rel=1e-3
    )
