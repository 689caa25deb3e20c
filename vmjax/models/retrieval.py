"""Text-video retrieval: a two-tower joint embedding and the symmetric InfoNCE loss (CLIP).

The video tower encodes rgb and audio frames with the encoders the `Multimodal` classifier uses
(a ViViT over rgb frames, an LSTM over audio frames) and fuses them with one of its fusion
modules; the text tower is the classifier's LSTM `TextEncoder` or, with text_tower='minilm', a
pretrained MiniLM sentence encoder (vmjax.models.minilm; its params come from a checkpoint, see
vmjax.train.retrieval), frozen or fine-tuned. Each tower ends in a linear
projection to `embed_dim` and L2 normalisation, so a dot product is a cosine similarity. A
learned temperature multiplies the similarities before the softmax: `log_scale` starts at
log(1 / 0.07) and the scale is clipped at 100 (CLIP, Radford et al. 2021).

Sources: CLIP (Radford et al. 2021, arXiv:2103.00020, Fig. 3: the symmetric cross-entropy
over the similarity matrix, Sec. 2.5: the temperature); InfoNCE (van den Oord et al. 2018,
arXiv:1807.03748, eq. 4), each direction of the symmetric loss.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.classifiers import encode_modalities, fuse
from vmjax.models.encoders import TextEncoder
from vmjax.models.minilm import MiniLM

VIDEO_MODALITIES = ("rgb", "audio")
VIDEO_FUSIONS = ("concat", "gated", "bottleneck")
TEXT_TOWERS = ("lstm", "minilm")
INIT_LOG_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOG_SCALE = math.log(100.0)  # CLIP clips the logit scale at 100
_NORM_EPS = 1e-12
_MASKED_LOGIT = -1e9  # added to padding columns' logits in infonce_loss


def l2_normalize(x: jax.Array) -> jax.Array:
    """`x / ||x||` over the last axis in float32; a zero vector stays zero."""
    x = x.astype(jnp.float32)
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, _NORM_EPS**2))


class VideoTower(nn.Module):
    """rgb ViViT and audio LSTM fused like `Multimodal` (without its head) -> `[B, D_fused]`.

    concat: the modality embeddings side by side; gated: their softmax-gated sum; bottleneck:
    MBT over the ViViT frame tokens and LSTM outputs, the mean of the modalities' CLS outputs.
    """

    hidden_size: int  # audio LSTM width and the fusion width
    vivit: dict  # ViViTEncoder fields for the rgb encoder
    fusion: str  # concat | gated | bottleneck
    modalities: str  # comma-separated subset of rgb,audio
    fusion_layers: int  # bottleneck: transformer layers per modality
    fusion_layer: int  # bottleneck: first layer that exchanges through bottlenecks
    num_bottlenecks: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        names = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if not names or set(names) - set(VIDEO_MODALITIES):
            raise ValueError(
                f"JointEmbedding modalities={self.modalities!r}: choose from {VIDEO_MODALITIES} "
                "(text has its own tower)"
            )
        if self.fusion not in VIDEO_FUSIONS:
            raise ValueError(
                f"JointEmbedding fusion={self.fusion!r} is unknown; expected one of {VIDEO_FUSIONS}"
            )
        tokens, masks, embeddings = encode_modalities(
            inputs, names, vivit=self.vivit, hidden_size=self.hidden_size, train=train
        )
        return fuse(
            self.fusion,
            tokens,
            masks,
            embeddings,
            hidden_size=self.hidden_size,
            fusion_layers=self.fusion_layers,
            fusion_layer=self.fusion_layer,
            num_bottlenecks=self.num_bottlenecks,
            train=train,
        )


class JointEmbedding(nn.Module):
    """Video and text towers into one `embed_dim` space of unit vectors, plus a learned scale.

    `__call__(inputs, train=...)` -> {'video': [B, E], 'text': [B, E], 'log_scale': []} from
    `inputs` with rgb/audio `[B, T, F]`, mask `[B, T]`, text_tokens and text_mask `[B, L]`.
    `embed_video` / `embed_text` run one tower only, e.g. to fill an index or embed queries:
    `model.apply(variables, tokens, mask, train=False, method=JointEmbedding.embed_text)`.
    """

    embed_dim: int  # the joint space's width
    hidden_size: int  # audio/text LSTM width and the video fusion width
    vivit: dict  # ViViTEncoder fields for the rgb encoder
    text_vocab_size: int
    text_embed_dim: int  # token embedding width
    fusion: str  # video tower: concat | gated | bottleneck
    modalities: str  # video tower inputs: comma-separated subset of rgb,audio
    fusion_layers: int  # bottleneck: transformer layers per modality
    fusion_layer: int  # bottleneck: first layer that exchanges through bottlenecks
    num_bottlenecks: int
    text_tower_kind: str = "lstm"  # lstm (TextEncoder) | minilm (pretrained MiniLM)
    minilm: dict | None = None  # MiniLM fields (the checkpoint's module) when text_tower='minilm'
    # minilm: a fixed feature extractor (deterministic, no gradient); the trainer also keeps its
    # params out of the optimizer, so weight decay cannot move them.
    freeze_text_tower: bool = False

    def setup(self):
        self.video_tower = VideoTower(
            self.hidden_size,
            self.vivit,
            self.fusion,
            self.modalities,
            self.fusion_layers,
            self.fusion_layer,
            self.num_bottlenecks,
        )
        self.video_projection = nn.Dense(self.embed_dim)
        if self.text_tower_kind == "lstm":
            self.text_tower = TextEncoder(
                self.text_vocab_size, self.text_embed_dim, self.hidden_size
            )
        elif self.text_tower_kind == "minilm":
            if self.minilm is None:
                raise ValueError("JointEmbedding text_tower_kind='minilm' needs the MiniLM fields")
            self.text_tower = MiniLM(**self.minilm)
        else:
            raise ValueError(
                f"JointEmbedding text_tower_kind={self.text_tower_kind!r} is unknown; expected "
                f"one of {TEXT_TOWERS}"
            )
        self.text_projection = nn.Dense(self.embed_dim)
        self.log_scale = self.param("log_scale", nn.initializers.constant(INIT_LOG_SCALE), ())

    def scale(self) -> jax.Array:
        """The similarity scale the loss applies, `logit_scale(log_scale)`."""
        return logit_scale(self.log_scale)

    def embed_video(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        """Unit-norm video embeddings `[B, embed_dim]` (float32)."""
        return l2_normalize(self.video_projection(self.video_tower(inputs, train=train)))

    def text_features(self, tokens: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """The text tower's output before the projection: LSTM final state or MiniLM sentence."""
        if self.text_tower_kind == "lstm":
            _, final = self.text_tower(tokens, mask, train=train)
            return final
        if self.freeze_text_tower:
            return jax.lax.stop_gradient(self.text_tower(tokens, mask, train=False))
        return self.text_tower(tokens, mask, train=train)

    def embed_text(self, tokens: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Unit-norm text embeddings `[B, embed_dim]` (float32) of `tokens`, `mask`: `[B, L]`."""
        return l2_normalize(self.text_projection(self.text_features(tokens, mask, train=train)))

    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        return {
            "video": self.embed_video(inputs, train=train),
            "text": self.embed_text(inputs["text_tokens"], inputs["text_mask"], train=train),
            "log_scale": self.log_scale,
        }


def logit_scale(log_scale: jax.Array) -> jax.Array:
    """exp(log_scale) clipped at 100; no gradient flows to log_scale above the clip."""
    return jnp.exp(jnp.minimum(jnp.asarray(log_scale, jnp.float32), MAX_LOG_SCALE))


def infonce_loss(
    video_emb: jax.Array,
    text_emb: jax.Array,
    log_scale: jax.Array,
    axis_name: str | tuple[str, ...] | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Symmetric InfoNCE: the mean of video->text and text->video softmax cross-entropies.

    With logits s * V T^T (s = `logit_scale(log_scale)`), pair i's positive is column i and the
    other texts (videos) of the batch are its negatives. Embeddings `[B, E]` should be unit norm.
    The two sides may be any paired views (vmjax.models.audiovisual pairs rgb with audio).

    weights: `[B]`, optional: rows with weight 0 (batch padding) are masked out, neither
      queries nor anyone's negatives, and the loss is the mean over the rows with weight > 0
      (the whole global batch's, under axis_name); 0 when no row is real. Weights are
      indicators: a positive weight counts as 1.

    axis_name: None under `jax.jit` on global arrays (one device or a sharded `Mesh`, where
      XLA inserts the collectives itself). Inside `jax.shard_map` (or `pmap`) over a data axis
      (a name or a tuple of names, e.g. ('data', 'fsdp')), this device's rows are
      contrasted with the whole global batch: both embeddings are all-gathered over the axis
      (all devices must hold the same number of rows, in axis-index order) and the loss is
      averaged over it, so the value equals the single-device loss on the global batch.
    Gradients: all_gather's transpose is a reduce-scatter (psum_scatter), so the cotangent of
    each local embedding sums what every device's rows contribute through it; nothing else is
    needed. Under `jax.shard_map` (with its default varying-axes checks) the gradients of this
    loss are the global-batch gradients, whether the grad is taken outside the shard_map or
    inside it (w.r.t. replicated parameters they come out complete, no psum needed). `jax.pmap`
    has no such types: each device differentiates the averaged loss as if it were its own, so
    per-device parameter gradients must be `lax.pmean`-ed (as for any data-parallel mean loss,
    or, as vmjax.train.step does, psum the gradients of `loss * local_batch` and divide by the
    global batch) and gradients w.r.t. the local rows come out `axis_size` times too large.
    """
    video_emb = video_emb.astype(jnp.float32)
    text_emb = text_emb.astype(jnp.float32)
    if video_emb.shape != text_emb.shape or video_emb.ndim != 2:
        raise ValueError(
            f"infonce_loss: video_emb and text_emb must both be [batch, dim]; got "
            f"{video_emb.shape} and {text_emb.shape}"
        )
    local = video_emb.shape[0]
    real = jnp.ones((local,), bool) if weights is None else jnp.asarray(weights) > 0
    if real.shape != (local,):
        raise ValueError(f"infonce_loss: weights must be [{local}]; got {real.shape}")
    if axis_name is None:
        all_video, all_text, all_real, offset = video_emb, text_emb, real, 0
    else:
        all_video = jax.lax.all_gather(video_emb, axis_name, tiled=True)
        all_text = jax.lax.all_gather(text_emb, axis_name, tiled=True)
        all_real = jax.lax.all_gather(real, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * local
    scale = logit_scale(log_scale)
    positives = offset + jnp.arange(local)
    # A padding column is no one's negative: a large finite negative logit (not -inf, so a
    # padding row's own, discarded loss stays finite and so do the gradients).
    column_mask = jnp.where(all_real, 0.0, _MASKED_LOGIT)
    video_to_text = scale * video_emb @ all_text.T + column_mask  # [local, global]
    text_to_video = scale * text_emb @ all_video.T + column_mask

    def row_losses(logits: jax.Array) -> jax.Array:
        correct = jnp.take_along_axis(logits, positives[:, None], axis=1)[:, 0]
        return jax.nn.logsumexp(logits, axis=1) - correct

    per_row = 0.5 * (row_losses(video_to_text) + row_losses(text_to_video))
    total = jnp.sum(jnp.where(real, per_row, 0.0))
    count = jnp.sum(real, dtype=jnp.float32)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), axis_name)
    return total / jnp.maximum(count, 1.0)
