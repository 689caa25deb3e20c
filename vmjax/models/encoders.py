"""Per-modality encoders: each maps its inputs to tokens `[B, N, D]` and an embedding `[B, D]`."""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.rnn import RNN
from vmjax.models.vivit import FrameFeatureEmbedding, ViViT


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


class RGBEncoder(nn.Module):
    """ViViT over rgb frame features `[B, T, 1024]`; tokens are the final per-frame tokens."""

    hidden_size: int
    variant: str
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_temporal_layers: int = 0
    pooling: str = "mean"
    tokens_per_frame: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self, frames: jax.Array, mask: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        embedded = FrameFeatureEmbedding(self.hidden_size, self.tokens_per_frame, name="embed")(
            frames, mask
        )
        vivit = ViViT(
            variant=self.variant,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            num_temporal_layers=self.num_temporal_layers,
            pooling=self.pooling,
            dropout=self.dropout,
            name="vivit",
        )
        embedding, tokens = vivit(embedded, mask, train=train, return_tokens=True)
        tokens = (
            einops.rearrange(tokens, "b t s d -> b t (s d)")
            if tokens.shape[2] == 1
            else (einops.reduce(tokens, "b t s d -> b t d", "mean"))
        )
        return jnp.where(mask[..., None], tokens, 0), embedding
