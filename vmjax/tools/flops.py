"""FLOPs of vmjax's steps from XLA's cost analysis, and accelerators' peak FLOP/s (for MFU).

Used by benchmarks/train_throughput.py; kept here so tests can check them against hand counts.
"""

import re

import jax
from absl import logging

from vmjax.data.device import DTYPES, cast_floats
from vmjax.train import parallel

# Dense (no sparsity) peak FLOP/s of one JAX device: (name, device_kind regex, 16-bit tensor
# cores, TF32 tensor cores, float32 without tensor cores). The first match wins. Sources, the
# vendors' datasheets (NVIDIA quotes tensor-core figures with 2:4 sparsity; halved here):
#   H100 SXM / PCIe: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 (and GH200): https://www.nvidia.com/en-us/data-center/h200/ - same compute as H100 SXM
#   A100: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   V100: https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
#     (fp16 tensor cores; Volta has no bf16 or TF32, so a bf16 run there does not reach this)
#   TPU: https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e ("peak compute per chip (bf16)";
#     one JAX device per chip on these). TPUs run float32 matmuls as bf16 passes by default.
# NVL boards (H100 NVL, H200 NVL) run at other clocks and are left out: mfu n/a there.
PEAK_FLOPS = (
    ("H100 PCIe", r"H100.*PCIe", 756e12, 378e12, 51e12),
    ("H100 SXM", r"H100(?!.*NVL)", 989e12, 494e12, 67e12),
    ("H200/GH200", r"H200(?!.*NVL)", 989e12, 494e12, 67e12),
    ("A100", r"A100", 312e12, 156e12, 19.5e12),
    ("V100 PCIe", r"V100.*PCIe", 112e12, None, 14e12),
    ("V100 SXM2", r"V100", 125e12, None, 15.7e12),
    ("TPU v4", r"^TPU v4$", 275e12, 275e12, 275e12),
    ("TPU v5e", r"^TPU v5( lite|e)", 197e12, 197e12, 197e12),
    ("TPU v5p", r"^TPU v5p?$", 459e12, 459e12, 459e12),
    ("TPU v6e", r"^TPU v6( lite|e)", 918e12, 918e12, 918e12),
)
# jax_default_matmul_precision values that keep float32 matmuls off TF32 tensor cores.
_FULL_FLOAT32 = ("float32", "highest", "F32_F32_F32")


def peak_flops(device_kind: str, dtype: str, matmul_precision: str | None) -> tuple[float, str]:
    """Peak FLOP/s of one device for `dtype` compute, and what it is; raises KeyError if unknown.

    float32 on Ampere/Hopper counts against TF32: JAX's default precision runs float32 matmuls
    on TF32 tensor cores there, unless jax_default_matmul_precision asks for full float32.
    """
    for name, pattern, half, tf32, fp32 in PEAK_FLOPS:
        if re.search(pattern, device_kind, re.IGNORECASE):
            if dtype == "bfloat16" and tf32 is None:
                return half, f"{name} fp16 tensor cores (which bf16 cannot use on Volta)"
            if dtype == "bfloat16":
                return half, f"{name} 16-bit dense"
            if name.startswith("TPU"):
                return half, f"{name} bf16 (float32 matmuls run as bf16 passes)"
            if tf32 is None or str(matmul_precision) in _FULL_FLOAT32:
                return fp32, f"{name} float32 without tensor cores"
            return tf32, f"{name} TF32 dense (JAX's default float32 matmul precision)"
    raise KeyError(device_kind)


def compiled_flops(lower) -> tuple[float | None, bool]:
    """Flops of what `lower()` lowers, compiled; and whether it has loops. (None, _) if unknown."""
    try:
        compiled = lower().compile()
        cost = compiled.cost_analysis()
    except Exception as e:  # a benchmark should still print its timings
        logging.warning("XLA cost analysis failed (%s: %s)", type(e).__name__, e)
        return None, False
    if isinstance(cost, list | tuple):  # older JAX returned one dict per device
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    # XLA counts a while loop's body once, whatever its trip count.
    return (flops if flops and flops > 0 else None), " while(" in compiled.as_text()


def step_flops(config, model, tx, state, batch) -> tuple[float | None, bool]:
    """FLOPs of one train step on the global batch, from XLA's cost analysis; and any loops.

    The compiled, partitioned step is one device's program, so its count is multiplied by the
    device count; work every device repeats (the optimizer update of replicated parameters) is
    then counted once per device, which is small next to the model at useful batch sizes.
    """
    flat = config.copy_and_resolve_references()
    flat.grad_accum = 1  # same arithmetic; micro-batches would be a loop XLA counts once
    par = parallel.create(flat, model, tx)
    flops, loops = compiled_flops(lambda: jax.jit(par.train_step).lower(state, batch))
    return (None if flops is None else flops * jax.device_count()), loops


def forward_flops(model, state, inputs, dtype: str) -> tuple[float | None, bool]:
    """FLOPs of the forward pass (train=False) on one device, from shapes only."""
    variables = jax.eval_shape(
        lambda s: {"params": cast_floats(s.params, DTYPES[dtype]), **s.model_state}, state
    )
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return compiled_flops(lambda: forward.lower(variables, inputs))
