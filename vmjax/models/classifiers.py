"""Video classifiers: features dict -> per-class log-odds `[batch, num_classes]`.

Sources: the YouTube-8M starter models (Abu-El-Haija et al. 2016, arXiv:1609.08675, Sec. 4,
"Baseline approaches": logistic regression, mixture of experts, Deep Bag of Frames, LSTM over
frames); WILLOW's NetVLAD model (Miech et al. 2017, arXiv:1706.06905); NeXtVLAD (Lin et al.
2018, arXiv:1811.05014, Sec. 3); CNN + LSTM on pixels (Donahue et al. 2015, LRCN,
arXiv:1411.4389); ViViT (Arnab et al. 2021, vmjax.models.vivit); MBT fusion (Nagrani et al.
2021, vmjax.models.fusion). The equations of the layers are in heads.py, pooling.py, rnn.py,
cnn.py, each next to the code.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.aux_losses import sow_aux_logits
from vmjax.models.cnn import FrameResNet, normalize_pixels
from vmjax.models.encoders import AudioEncoder, RecurrentEncoder, TextEncoder, frame_tokens
from vmjax.models.fusion import BottleneckFusion, ConcatFusion, GatedFusion, LateFusion
from vmjax.models.heads import ContextGating, LogisticHead, MoEHead
from vmjax.models.pooling import DBoF, NetVLAD, NeXtVLAD, masked_mean
from vmjax.models.rnn import RNN
from vmjax.models.vivit import ViViT, ViViTEncoder


def _concat_features(inputs: dict[str, jax.Array]) -> jax.Array:
    """Joins rgb and audio on the feature axis; dims come from the arrays, not constants."""
    return jnp.concatenate([inputs["rgb"], inputs["audio"]], axis=-1)


class VideoLogistic(nn.Module):
    """Logistic regression on the video-level mean rgb and audio features."""

    num_classes: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train  # No dropout or batch norm; kept for the shared model contract.
        return LogisticHead(self.num_classes, name="head")(_concat_features(inputs))


class VideoMoE(nn.Module):
    """Mixture of experts on the video-level mean rgb and audio features."""

    num_classes: int
    num_mixtures: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train
        head = MoEHead(self.num_classes, self.num_mixtures, name="head")
        return head(_concat_features(inputs))


class FrameMoE(nn.Module):
    """Mixture of experts on frame rgb and audio features averaged over the valid frames."""

    num_classes: int
    num_mixtures: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(_mean_frames(inputs))


def _mean_frames(inputs: dict[str, jax.Array]) -> jax.Array:
    """The mean of the valid frames' features `[B, 1152]` (rgb then audio).

    Each modality is averaged on its own and the means joined: the same numbers as averaging
    the joined frames, without XLA writing the joined `[B, T, 1152]` float frames out first
    (XLA:CPU, 64 x 300 frames: the pooling took ~72 ms that way, ~30-35 ms this way).
    """
    mask = inputs["mask"]
    return jnp.concatenate(
        [masked_mean(inputs["rgb"], mask), masked_mean(inputs["audio"], mask)], -1
    )


def _frames(inputs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Frame features `[B, T, 1152]` (rgb then audio) and their mask `[B, T]`."""
    return _concat_features(inputs), inputs["mask"]


class FrameLogistic(nn.Module):
    """The starter's FrameLevelLogisticModel: logistic regression on mean frame features."""

    num_classes: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train
        return LogisticHead(self.num_classes, name="head")(_mean_frames(inputs))


class DBoFModel(nn.Module):
    """The starter's DbofModel: Deep Bag of Frames pooling, then MoE."""

    num_classes: int
    num_mixtures: int
    cluster_size: int
    hidden_size: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        pooled = DBoF(self.cluster_size, self.hidden_size, name="dbof")(
            *_frames(inputs), train=train
        )
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(pooled)


class LSTMModel(nn.Module):
    """The starter's LstmModel: stacked LSTM over frames; its final state feeds an MoE."""

    num_classes: int
    num_mixtures: int
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        _, final = RecurrentEncoder(self.hidden_size, self.num_layers, name="lstm")(
            *_frames(inputs), train=train
        )
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(final)


class _VLADModel(nn.Module):
    """VLAD pooling of rgb and audio separately, a hidden layer, context gating, then MoE."""

    num_classes: int
    num_mixtures: int
    num_clusters: int
    audio_clusters: int
    hidden_size: int
    dropout: float

    def pool(self, x: jax.Array, mask: jax.Array, clusters: int, name: str, train: bool):
        raise NotImplementedError

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        mask = inputs["mask"]
        rgb = self.pool(inputs["rgb"], mask, self.num_clusters, "rgb_vlad", train)
        audio = self.pool(inputs["audio"], mask, self.audio_clusters, "audio_vlad", train)
        x = nn.Dropout(self.dropout, deterministic=not train)(jnp.concatenate([rgb, audio], -1))
        x = nn.Dense(self.hidden_size, name="hidden")(x)
        x = nn.BatchNorm(use_running_average=not train, name="hidden_bn")(x)
        x = ContextGating(name="gating")(x, train=train)
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(x)


class NetVLADModel(_VLADModel):
    """WILLOW's NetVLAD model: NetVLAD of rgb and of audio, FC, context gating, MoE."""

    def pool(self, x, mask, clusters, name, train):
        return NetVLAD(clusters, name=name)(x, mask, train=train)


class NeXtVLADModel(_VLADModel):
    """NeXtVLAD (Lin et al. 2018): NeXtVLAD of rgb and of audio, dropout, FC, BN, gating, MoE."""

    expansion: int = 2
    groups: int = 8

    def pool(self, x, mask, clusters, name, train):
        return NeXtVLAD(clusters, self.expansion, self.groups, name=name)(x, mask, train=train)


def _vivit(vivit: dict, name: str) -> ViViTEncoder:
    """ViViT over frame features, from the `model.vivit` sub-config."""
    return ViViTEncoder(**vivit, name=name)


class ViViTModel(nn.Module):
    """ViViT over frame features (rgb and audio of each frame as its tokens), then MoE."""

    num_classes: int
    num_mixtures: int
    vivit: dict

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        embedding = _vivit(self.vivit, "vivit")(*_frames(inputs), train=train)
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(embedding)


class CnnLstm(nn.Module):
    """CNN + LSTM on raw pixels: a ResNet per frame, a masked LSTM over time, then MoE.

    Reads `inputs["pixels"]: [batch, time, H, W, 3]` (uint8 in [0, 255] or float in [0, 1]) and
    `inputs["mask"]: [batch, time]` (all frames valid if absent). The video embedding is the
    LSTM's state after the last valid frame (zeros for a video without one), as in LSTMModel.
    `cnn` holds the `FrameResNet` fields (stage_sizes, width, norm, num_groups, pixel_mean,
    pixel_std), from the `model.cnn` sub-config.
    """

    num_classes: int
    num_mixtures: int
    hidden_size: int  # LSTM width
    num_layers: int  # stacked LSTM layers
    cnn: dict

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        if "pixels" not in inputs:
            raise ValueError(
                f"cnn_lstm reads inputs['pixels'] [batch, time, H, W, 3]; got keys "
                f"{sorted(inputs)} (frame features cannot feed a CNN)"
            )
        pixels = inputs["pixels"]
        mask = inputs.get("mask")
        if mask is None:
            mask = jnp.ones(pixels.shape[:2], bool)
        frames = FrameResNet(**self.cnn, name="cnn")(pixels, mask, train=train)
        _, final = RNN(
            self.hidden_size, "lstm", self.num_layers, return_sequences=False, name="lstm"
        )(frames, mask)
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(final)


# ViViT's hyper-parameters, which ViViTPixels declares too and hands on.
_VIVIT_FIELDS = tuple(f for f in ViViT.__dataclass_fields__ if f not in ("parent", "name"))


class ViViTPixels(nn.Module):
    """ViViT on raw pixels (Arnab et al. 2021): tubelet embedding, encoder, linear head.

    Reads `inputs["pixels"]: [batch, time, H, W, 3]` (uint8 in [0, 255] or float in [0, 1]),
    normalised by `pixel_mean` / `pixel_std`, and `inputs["mask"]: [batch, time]` (all frames
    valid if absent). The fields are `ViViTEncoder`'s (flat, as configs/vivit_k400.py sets
    them); `time` must be a multiple of `patch_size[0]` and H, W of the other two.
    """

    num_classes: int
    variant: str
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    num_temporal_layers: int
    pooling: str
    dropout: float
    attention_dropout: float
    posemb_init: str
    patch_size: tuple[int, int, int]  # tubelet (pt, ph, pw)
    pixel_mean: tuple[float, ...]  # per channel, of [0, 1] pixels
    pixel_std: tuple[float, ...]
    # Defaulted, so that a run saved before the field existed rebuilds with its tables.
    posemb_layout: str = "factorised"

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        if "pixels" not in inputs:
            raise ValueError(
                f"vivit_pixels reads inputs['pixels'] [batch, time, H, W, 3]; got keys "
                f"{sorted(inputs)} (use model 'vivit' for frame features)"
            )
        pixels = normalize_pixels(inputs["pixels"], self.pixel_mean, self.pixel_std)
        fields = {f: getattr(self, f) for f in _VIVIT_FIELDS}
        embedding = ViViTEncoder(**fields, patch_size=tuple(self.patch_size), name="vivit")(
            pixels, inputs.get("mask"), train=train
        )
        return LogisticHead(self.num_classes, name="head")(embedding)


MODALITIES = ("rgb", "audio", "text")
FUSIONS = ("concat", "gated", "bottleneck", "late")
HEADS = ("moe", "logistic")


class Multimodal(nn.Module):
    """rgb ViViT + audio LSTM + text LSTM, fused by `fusion`, then MoE (or a logistic head).

    concat / gated fuse the modality embeddings; late averages per-modality MoE logits;
    bottleneck is MBT: each modality's tokens (rgb ViViT tokens, audio and text LSTM outputs)
    run through their own transformer layers and exchange information only through shared
    bottleneck tokens from `fusion_layer` on. `modalities` drops inputs for ablations.
    """

    num_classes: int
    num_mixtures: int
    hidden_size: int  # audio/text LSTM width, and the width every modality is projected to
    vivit: dict
    text_vocab_size: int
    text_embed_dim: int
    fusion: str
    modalities: str  # comma-separated subset of rgb,audio,text
    fusion_layers: int  # bottleneck: transformer layers per modality
    fusion_layer: int  # bottleneck: first layer that exchanges through bottlenecks
    num_bottlenecks: int
    head: str = "moe"  # moe | logistic (one linear layer: a linear probe of the fused embedding)
    late_weights: str = "mean"  # late: mean | modality | class (fusion.LATE_WEIGHTS)
    # late: weight of each modality head's own loss (its logits against the labels), added to the
    # loss of the fused logits in training; 0 trains the heads only through their combination.
    modality_loss: float = 0.0

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        names = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if not names or set(names) - set(MODALITIES):
            raise ValueError(f"model.modalities={self.modalities!r}: choose from {MODALITIES}")
        if self.head not in HEADS:
            raise ValueError(f"model.head={self.head!r} is unknown; expected one of {HEADS}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion={self.fusion!r} is unknown; expected one of {FUSIONS}")
        tokens, masks, embeddings = encode_modalities(
            inputs,
            names,
            vivit=self.vivit,
            hidden_size=self.hidden_size,
            text_vocab_size=self.text_vocab_size,
            text_embed_dim=self.text_embed_dim,
            train=train,
        )

        def head(name):
            if self.head == "logistic":
                return LogisticHead(self.num_classes, name=name)
            return MoEHead(self.num_classes, self.num_mixtures, name=name)

        if self.fusion == "late":
            logits = {m: head(f"{m}_head")(e) for m, e in embeddings.items()}
            if self.modality_loss:
                for m in sorted(logits):
                    sow_aux_logits(self, f"{m}_logits", logits[m], self.modality_loss)
            return LateFusion(self.late_weights, name="late")(logits)
        fused = fuse(
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
        return head("head")(fused)


def encode_modalities(
    inputs: dict[str, jax.Array],
    names: list[str],
    *,
    vivit: dict,
    hidden_size: int,
    text_vocab_size: int = 0,
    text_embed_dim: int = 0,
    train: bool,
) -> tuple[dict, dict, dict]:
    """(tokens, masks, embeddings) by modality of `names`, for Multimodal and retrieval towers.

    rgb: a ViViT over the frames (its frame tokens and CLS embedding); audio and text: LSTMs
    (their outputs and final states). Call inside a compact method: the encoders become that
    module's submodules `rgb`, `audio`, `text`.
    """
    mask = inputs["mask"]
    tokens, masks, embeddings = {}, {}, {}
    if "rgb" in names:
        embeddings["rgb"], rgb_tokens = _vivit(vivit, "rgb")(
            inputs["rgb"], mask, train=train, return_tokens=True
        )
        tokens["rgb"] = frame_tokens(rgb_tokens, mask)
        masks["rgb"] = mask
    if "audio" in names:
        tokens["audio"], embeddings["audio"] = AudioEncoder(hidden_size, name="audio")(
            inputs["audio"], mask, train=train
        )
        masks["audio"] = mask
    if "text" in names:
        text = TextEncoder(text_vocab_size, text_embed_dim, hidden_size, name="text")
        tokens["text"], embeddings["text"] = text(
            inputs["text_tokens"], inputs["text_mask"], train=train
        )
        masks["text"] = inputs["text_mask"]
    return tokens, masks, embeddings


def fuse(
    fusion: str,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    embeddings: dict[str, jax.Array],
    *,
    hidden_size: int,
    fusion_layers: int,
    fusion_layer: int,
    num_bottlenecks: int,
    train: bool,
) -> jax.Array:
    """One `[B, D]` embedding from the modalities by concat, gated or bottleneck (MBT) fusion.

    concat / gated fuse the modality embeddings; bottleneck projects each modality's tokens to
    `hidden_size`, runs MBT and averages the modalities' outputs. Call inside a compact method.
    """
    if fusion == "concat":
        return ConcatFusion()(embeddings)
    if fusion == "gated":
        return GatedFusion(hidden_size, name="gated")(embeddings)
    if fusion != "bottleneck":
        raise ValueError(f"fusion {fusion!r}: expected concat, gated or bottleneck")
    projected = {m: nn.Dense(hidden_size, name=f"{m}_tokens")(t) for m, t in tokens.items()}
    fused = BottleneckFusion(
        num_layers=fusion_layers,
        fusion_layer=fusion_layer,
        num_heads=max(1, hidden_size // 64),
        mlp_dim=2 * hidden_size,
        num_bottlenecks=num_bottlenecks,
        name="mbt",
    )(projected, masks, train=train)
    return jnp.mean(jnp.stack([fused[m] for m in sorted(fused)]), axis=0)
