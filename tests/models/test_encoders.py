"""Per-modality encoders against an LSTM written out in numpy and a numpy spatial mean."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.models.test_rnn import _gates_from_ours, _np_run, _random_like
from vmjax.models.encoders import AudioEncoder, TextEncoder, frame_tokens

HIDDEN = 4


def _check_lstm(params: dict, x: np.ndarray, lengths: list[int], tokens, embedding) -> None:
    """tokens = the LSTM's outputs on each valid frame (0 after), embedding = the last one."""
    gates = _gates_from_ours("lstm", params)
    for b, n in enumerate(lengths):
        hs, last = _np_run("lstm", gates, np.asarray(x[b, :n], np.float64))
        np.testing.assert_allclose(tokens[b, :n], hs, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(tokens[b, n:], 0)
        np.testing.assert_allclose(embedding[b], last, rtol=1e-4, atol=1e-5)  # 0 if n = 0


def test_audio_encoder_embedding_is_the_last_valid_lstm_state():
    lengths = [5, 2, 0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 6)).astype(np.float32)
    mask = np.arange(5)[None] < np.array(lengths)[:, None]
    x[~mask] = 1e6  # padding that must not reach anything
    model = AudioEncoder(HIDDEN)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, mask, train=False))
    params = _random_like(shapes["params"], seed=1)
    tokens, embedding = model.apply({"params": params}, x, mask, train=False)
    assert tokens.shape == (3, 5, HIDDEN) and embedding.shape == (3, HIDDEN)
    _check_lstm(params["rnn"]["l0"], x, lengths, np.asarray(tokens), np.asarray(embedding))


def test_text_encoder_is_the_lstm_over_looked_up_embeddings():
    lengths = [4, 1]
    ids = np.array([[3, 1, 4, 1], [5, 9, 2, 6]], np.int32)
    mask = np.arange(4)[None] < np.array(lengths)[:, None]
    model = TextEncoder(vocab_size=10, embed_dim=3, hidden_size=HIDDEN)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask, train=False))
    params = _random_like(shapes["params"], seed=2)
    tokens, embedding = model.apply({"params": params}, ids, mask, train=False)
    looked_up = np.asarray(params["embed"]["embedding"])[ids]
    _check_lstm(
        params["lstm"]["rnn"]["l0"], looked_up, lengths, np.asarray(tokens), np.asarray(embedding)
    )


def test_frame_tokens_are_spatial_means_zeroed_on_padding():
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    mask = np.array([[True, True, False], [True, False, False]])
    out = np.asarray(frame_tokens(jnp.asarray(tokens), jnp.asarray(mask)))
    expected = np.where(mask[..., None], tokens.mean(axis=2), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
