"""What the devices compute on: a batch's model inputs (dequantized there), compute dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vmjax.data import yt8m

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_inputs(batch: dict, dtype=jnp.float32) -> dict:
    """Model inputs from a batch: uint8 frames are dequantized here, on the device.

    YT8M rgb/audio features become `dtype`. Raw `pixels` stay uint8 in float32 runs (the
    model normalises them, and a float copy would be 4x the bytes); in bfloat16 runs they
    become bfloat16 in [0, 1], so the first layer computes in bfloat16 too.
    """
    inputs = {}
    for key in ("rgb", "audio"):
        if key not in batch:
            continue
        x = batch[key]
        x = yt8m.dequantize(x, xp=jnp) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        inputs[key] = x.astype(dtype)
    if "pixels" in batch:
        pixels = batch["pixels"]
        if dtype != jnp.float32 and jnp.issubdtype(pixels.dtype, jnp.integer):
            pixels = pixels.astype(dtype) / 255
        elif dtype != jnp.float32:
            pixels = pixels.astype(dtype)
        inputs["pixels"] = pixels
    for key in ("mask", "rgb_mask", "audio_mask", "text_tokens", "text_mask"):
        if key in batch:
            inputs[key] = batch[key]
    return inputs


def cast_floats(tree, dtype):
    """Floating-point leaves of `tree` cast to `dtype` (the compute copy of float32 params)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )
