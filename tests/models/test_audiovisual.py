"""AudioVisual: each modality's embedding is its encoder's, projected and put on the unit sphere."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.models.random_params import random_params
from vmjax.models.audiovisual import AudioVisual

MODEL = AudioVisual(
    embed_dim=3,
    hidden_size=4,
    vivit=dict(variant="spatio_temporal", num_layers=1, hidden_size=8, num_heads=2, mlp_dim=16),
)


@functools.partial(jax.jit, static_argnames="features")
def _apply(params: dict, inputs: dict, features: bool = False):
    return MODEL.apply({"params": params}, inputs, train=False, features=features)


def _inputs() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {
        "rgb": jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32),
        "mask": jnp.asarray([[True, True, True], [True, True, False]]),
    }


def test_embeddings_are_normalised_projections_of_the_encoders():
    inputs = _inputs()
    params = random_params(MODEL, inputs, train=False)
    out = _apply(params, inputs)
    # The encoders' embeddings side by side, audio (hidden_size wide) then rgb, as a probe reads.
    features = np.asarray(_apply(params, inputs, features=True), np.float64)
    assert features.shape == (2, 4 + 8)
    for m, part in (("audio", features[:, :4]), ("rgb", features[:, 4:])):
        dense = params[f"{m}_projection"]
        z = part @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
        expected = z / np.linalg.norm(z, axis=-1, keepdims=True)
        np.testing.assert_allclose(out[m], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["log_scale"], params["log_scale"])


def test_a_modality_mask_replaces_the_mask_for_that_modality_only():
    inputs = _inputs()
    params = random_params(MODEL, inputs, train=False)
    short = jnp.asarray([[True, False, False], [True, True, False]])
    own = _apply(params, inputs | {"audio_mask": short})
    np.testing.assert_array_equal(own["rgb"], _apply(params, inputs)["rgb"])
    np.testing.assert_allclose(own["audio"], _apply(params, inputs | {"mask": short})["audio"])
    assert not np.allclose(own["audio"][0], _apply(params, inputs)["audio"][0], atol=1e-4)
