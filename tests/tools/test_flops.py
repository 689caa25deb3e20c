"""XLA FLOP counts of the train step against a hand count, and the peak FLOP/s table's rules."""

import jax.numpy as jnp
import ml_collections
import pytest

from tests.train.test_step import _setup
from vmjax.data.device import model_inputs
from vmjax.tools import flops
from vmjax.train import parallel

D, C, B = 1024 + 128, 50, 64  # logistic: one Dense [D -> C] on video-level rgb + audio


def _logistic_step_flops(grad_accum=1):
    config = ml_collections.ConfigDict(
        {
            "parallelism": "mesh",
            "mesh": {"fsdp": 1},
            "dtype": "float32",
            "grad_accum": grad_accum,
            "on_nonfinite_loss": "stop",
        }
    )
    model, tx, state = _setup("logistic", C, learning_rate=0.01)
    batch = {
        "rgb": jnp.zeros((B, 1024)),
        "audio": jnp.zeros((B, 128)),
        "labels": jnp.zeros((B, C), jnp.uint8),
        "weights": jnp.ones(B),
    }
    par = parallel.create(config, model, tx)
    step, loops = flops.step_flops(config, model, tx, par.put_state(state), batch)
    forward, _ = flops.forward_flops(model, state, model_inputs(batch), "float32")
    return step, forward, loops


def test_train_step_flops_match_a_hand_count():
    step, forward, loops = _logistic_step_flops()
    params = D * C + C
    # Two matmuls per example: logits = x W (2DC) and dW = x^T dlogits (2DC); no gradient
    # flows into the data. The rest is elementwise: cross-entropy (a few ops per logit) and
    # clipping + AdamW (optax: ~25 ops per parameter per step). Allow 100 of each: still far
    # from a forward-only count (2DC) or a per-step count (x B).
    assert 4 * D * C * B <= step <= 4 * D * C * B + 100 * params + 100 * C * B
    assert forward == pytest.approx(2 * D * C * B + 2 * C * B, rel=0.05)  # x W + b, sigmoid-free
    assert not loops
    # grad_accum is a loop XLA would count once: step_flops counts the unrolled step instead.
    assert _logistic_step_flops(grad_accum=4)[0] == step


def test_peak_flops_rules():
    bf16, _ = flops.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16", None)
    tf32, what = flops.peak_flops("NVIDIA H100 80GB HBM3", "float32", None)
    fp32, _ = flops.peak_flops("NVIDIA H100 80GB HBM3", "float32", "highest")
    assert bf16 == pytest.approx(2 * tf32, rel=0.01) and fp32 < tf32 / 5 and "TF32" in what
    assert flops.peak_flops("NVIDIA H200", "bfloat16", None)[0] == bf16  # same compute as H100
    assert flops.peak_flops("NVIDIA H100 PCIe", "bfloat16", None)[0] < bf16  # lower clocks
    v100, _ = flops.peak_flops("Tesla V100-SXM2-16GB", "float32", None)
    assert v100 == flops.peak_flops("Tesla V100-SXM2-16GB", "float32", "highest")[0]  # no TF32
    tpu, what = flops.peak_flops("TPU v4", "float32", None)
    assert tpu == flops.peak_flops("TPU v4", "bfloat16", None)[0] and "bf16" in what
    assert flops.peak_flops("TPU v5 lite", "bfloat16", None)[0] < tpu  # v5e < v4 < v5p
    assert flops.peak_flops("TPU v5p", "bfloat16", None)[0] > tpu
    for unknown in ("NVIDIA H100 NVL", "NVIDIA L4", "cpu"):
        with pytest.raises(KeyError):
            flops.peak_flops(unknown, "bfloat16", None)
