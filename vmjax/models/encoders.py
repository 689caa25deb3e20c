"""Per-modality encoders: each maps its inputs to tokens `[B, N, D]` and an embedding `[B, D]`.

Sources: the LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000) in
PyTorch's gate equations (vmjax.models.rnn); a sequence's embedding is the final hidden state
at its last valid step, as the YouTube-8M starter's LstmModel (Abu-El-Haija et al. 2016,
arXiv:1609.08675, Sec. 4). tests/models/test_encoders.py checks both against a direct
computation.
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.rnn import RNN


class RecurrentEncoder(nn.Module):
    """A masked LSTM over frames: tokens are its outputs, the embedding its final state."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        del train
        rnn = RNN(self.hidden_size, "lstm", self.num_layers, self.bidirectional, name="rnn")
        return rnn(x, mask)


class AudioEncoder(RecurrentEncoder):
    """LSTM over audio frames `[B, T, 128]`."""


class TextEncoder(nn.Module):
    """Token embedding, then an LSTM over `text_tokens: [B, L]` (mask `[B, L]`)."""

    vocab_size: int
    embed_dim: int
    hidden_size: int
    num_layers: int = 1

    @nn.compact
    def __call__(
        self, tokens: jax.Array, mask: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        embedded = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
        return RecurrentEncoder(self.hidden_size, self.num_layers, name="lstm")(
            embedded, mask, train=train
        )


def frame_tokens(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """ViViT's final tokens `[B, T, S, D]` as one token per frame `[B, T, D]` (spatial mean)."""
    tokens = einops.reduce(tokens, "b t s d -> b t d", "mean")
    return jnp.where(mask[..., None], tokens, 0)
