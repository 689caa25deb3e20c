"""Hugging Face transformers video classifiers as vmjax modules: ViViT and VideoMAE.

`convert(hf_config, state_dict)` turns a `VivitForVideoClassification` into the project's ViViT
(vmjax.models.vivit, Model 1 with a CLS token and one joint position table) and a
`VideoMAEForVideoClassification` into vmjax.models.videomae, each under a linear classifier.
`module.apply(variables, pixels)` on the processor's normalized clip, moved to channels-last
(`pixels = np.moveaxis(inputs["pixel_values"], 2, -1)`: `[batch, frames, height, width, 3]`),
gives transformers' logits. The state_dict may use either naming: the checkpoint files'
(`vivit.encoder.layer.0.attention.attention.query`, `...q_bias`) or that of transformers 5 in
memory (`vivit.layers.0.attention.q_proj`, `...query.bias`).

`load_folder(path)` reads a folder written by `save_pretrained` (config.json, model.safetensors
or its shards; pytorch_model.bin only where torch is installed) without transformers.

`for_registry(hf_config, state_dict, processor)` gives the same weights as a model the registry
(vmjax.models.build_model) builds from a config: a ViViT as 'vivit_pixels' (Model 1, joint
positions, CLS pooling), a VideoMAE as 'videomae_pixels', each normalizing uint8 pixels as the
checkpoint's image processor does (`pixel_normalization`). vmjax.tools.from_transformers
writes that into a run directory.
"""

import dataclasses
import importlib.util
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from vmjax.models.videomae import VideoMAE
from vmjax.models.vivit import ViViTEncoder

VIVIT = "VivitForVideoClassification"
VIDEOMAE = "VideoMAEForVideoClassification"
ARCHITECTURES = (VIVIT, VIDEOMAE)
# A config built in memory (not yet saved) has architectures=None; its model_type then decides.
_BY_MODEL_TYPE = {"vivit": VIVIT, "videomae": VIDEOMAE}
# transformers' names of the tanh-approximate GELU (the project's MlpBlock, jax's default) and
# of the exact erf GELU.
_TANH_GELUS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh")
_ERF_GELUS = ("gelu",)
# transformers' image processors' defaults, used where a folder has no preprocessor_config.json:
# ViViT rescales to [-1, 1] (factor 1/127.5, then minus 1: `offset`) and *then* normalizes by
# 0.5 / 0.5 as well, as google/vivit-b-16x2-kinetics400's processor does; VideoMAE scales to
# [0, 1] and normalizes by ImageNet's statistics.
PROCESSOR_CONFIG = "preprocessor_config.json"
_PROCESSOR_DEFAULTS = {
    VIVIT: {
        "do_rescale": True,
        "rescale_factor": 1 / 127.5,
        "offset": True,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
    VIDEOMAE: {
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "offset": False,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    },
}
# The registry's model names and the top-level parameter subtree of their encoder (what a
# fine-tuning run's init_from.modules names).
REGISTRY_NAMES = {VIVIT: "vivit_pixels", VIDEOMAE: "videomae_pixels"}
ENCODER_MODULES = {VIVIT: "vivit", VIDEOMAE: "videomae"}
# The project's transformer.Encoder keeps Flax's LayerNorm epsilon.
_FLAX_LAYER_NORM_EPS = 1e-6
# transformers 5 names some tensors differently in memory than in checkpoint files (it renames on
# load and back on save); these rules, applied in turn, map its names to the files', which the
# converters read.
_FILE_NAMES = {
    VIVIT: [
        (r"^vivit\.layers\.", "vivit.encoder.layer."),
        (r"\.attention\.q_proj\.", ".attention.attention.query."),
        (r"\.attention\.k_proj\.", ".attention.attention.key."),
        (r"\.attention\.v_proj\.", ".attention.attention.value."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (r"\.mlp\.fc1\.", ".intermediate.dense."),
        (r"\.mlp\.fc2\.", ".output.dense."),
    ],
    VIDEOMAE: [
        (r"\.attention\.attention\.query\.bias$", ".attention.attention.q_bias"),
        (r"\.attention\.attention\.value\.bias$", ".attention.attention.v_bias"),
    ],
}


class PixelClassifier(nn.Module):
    """`encoder(pixels) -> [B, D]`, then one linear layer to `num_classes` logits."""

    encoder: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, pixels: jax.Array, *, train: bool = False) -> jax.Array:
        return nn.Dense(self.num_classes, name="classifier")(self.encoder(pixels, train=train))


class _Arrays:
    """The state_dict by checkpoint-file names, read with shapes checked; remembers what was read.

    Errors name the caller's own key for a tensor.
    """

    def __init__(self, state_dict: Mapping[str, Any], architecture: str):
        self.architecture = architecture
        self.arrays: dict[str, Any] = {}
        self.given_name: dict[str, str] = {}
        for key, array in state_dict.items():
            name = key
            for pattern, replacement in _FILE_NAMES[architecture]:
                name = re.sub(pattern, replacement, name)
            if name in self.arrays:
                raise ValueError(
                    f"state_dict holds one tensor twice, as {self.given_name[name]!r} and "
                    f"{key!r} (transformers' file and in-memory names); keep one"
                )
            self.arrays[name] = array
            self.given_name[name] = key
        self.read: set[str] = set()

    def get(self, name: str, shape: Sequence[int | None]) -> np.ndarray:
        """`name` (a checkpoint file's name) as float32; None in `shape` allows any size."""
        if name not in self.arrays:
            raise ValueError(
                f"state_dict has no {name!r} (or its transformers 5 in-memory name), which a "
                f"{self.architecture} with this hf_config has; it holds {len(self.arrays)} "
                f"arrays, e.g. {sorted(self.given_name.values())[:4]}"
            )
        self.read.add(name)
        array = np.asarray(self.arrays[name], np.float32)
        if len(array.shape) != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
        ):
            expected = tuple("any" if s is None else s for s in shape)
            raise ValueError(
                f"state_dict[{self.given_name[name]!r}] has shape {array.shape}; hf_config "
                f"implies {expected}"
            )
        return array

    def check_all_read(self) -> None:
        unread = sorted(self.given_name[n] for n in set(self.arrays) - self.read)
        if unread:
            raise ValueError(
                f"state_dict has {len(unread)} arrays a {self.architecture} with this hf_config "
                f"does not have, e.g. {unread[:4]} (another architecture, or a config that does "
                "not belong to these weights?)"
            )


def _field(hf_config: Mapping[str, Any], *keys: str) -> Any:
    """hf_config's value under the first of `keys` present (older spellings after the first)."""
    for key in keys:
        if key in hf_config:
            return hf_config[key]
    raise ValueError(
        f"hf_config has no {keys[0]!r}"
        + (f" (nor {list(keys[1:])})" if len(keys) > 1 else "")
        + "; expected the model's config.to_dict() or its config.json"
    )


def _pair(value: int | Sequence[int], key: str) -> tuple[int, int]:
    """An HF size that is an int (square) or [height, width]."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"hf_config[{key!r}] = {value!r}; expected an int or [height, width]")
    return pair


def architecture_of(hf_config: Mapping[str, Any]) -> str:
    """The supported architecture an HF config describes, or a ValueError saying why none."""
    architectures = hf_config.get("architectures")
    if architectures:
        known = [a for a in architectures if a in ARCHITECTURES]
        if len(known) != 1:
            raise ValueError(
                f"hf_config['architectures'] = {architectures}; convert supports exactly one of "
                f"{list(ARCHITECTURES)}"
            )
        return known[0]
    model_type = hf_config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(
            f"hf_config has no architectures and model_type={model_type!r}; convert supports "
            f"{list(ARCHITECTURES)} (model_type {sorted(_BY_MODEL_TYPE)})"
        )
    return _BY_MODEL_TYPE[model_type]


def _dense(w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """torch Linear `[out, in]` -> Flax Dense."""
    return {"kernel": w.T, "bias": b}


def _layer_norm(w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {"scale": w, "bias": b}


def _conv3d(w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """torch Conv3d `[out, in, t, h, w]` -> Flax Conv `[t, h, w, in, out]` (channels last)."""
    return {"kernel": w.transpose(2, 3, 4, 1, 0), "bias": b}


def _attention(
    q: tuple[np.ndarray, np.ndarray],
    k: tuple[np.ndarray, np.ndarray],
    v: tuple[np.ndarray, np.ndarray],
    out: tuple[np.ndarray, np.ndarray],
    num_heads: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Linear (weight, bias) pairs -> transformer.MultiHeadAttention's per-head DenseGenerals.

    transformers splits the `heads * head_dim` features head-major, as a C-order reshape does.
    """
    dim = q[0].shape[1]
    heads = (num_heads, dim // num_heads)

    def projection(w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        return {"kernel": w.T.reshape(dim, *heads), "bias": b.reshape(heads)}

    return {
        "query": projection(*q),
        "key": projection(*k),
        "value": projection(*v),
        "out": {"kernel": out[0].T.reshape(*heads, dim), "bias": out[1]},
    }


def _gelu_is_approximate(hf_config: Mapping[str, Any]) -> bool:
    act = _field(hf_config, "hidden_act")
    if act not in _TANH_GELUS + _ERF_GELUS:
        raise ValueError(
            f"hf_config['hidden_act'] = {act!r} is not supported; expected one of "
            f"{list(_TANH_GELUS + _ERF_GELUS)}"
        )
    return act in _TANH_GELUS


def _convert_vivit(cfg: Mapping[str, Any], arrays: _Arrays) -> tuple[nn.Module, dict, tuple]:
    d = _field(cfg, "hidden_size")
    heads = _field(cfg, "num_attention_heads")
    mlp = _field(cfg, "intermediate_size")
    layers = _field(cfg, "num_hidden_layers")
    channels = _field(cfg, "num_channels")
    frames = _field(cfg, "num_frames")
    pt, ph, pw = _field(cfg, "tubelet_size")
    height, width = _pair(_field(cfg, "image_size"), "image_size")
    if not _gelu_is_approximate(cfg):
        raise ValueError(
            f"hf_config['hidden_act'] = {cfg['hidden_act']!r}: the project's ViViT MLP uses the "
            f"tanh GELU, one of {list(_TANH_GELUS)} (google/vivit-b-16x2-kinetics400: gelu_fast)"
        )
    if _field(cfg, "layer_norm_eps") != _FLAX_LAYER_NORM_EPS:
        raise ValueError(
            f"hf_config['layer_norm_eps'] = {cfg['layer_norm_eps']}: the project's ViViT "
            f"encoder uses {_FLAX_LAYER_NORM_EPS} (as google/vivit-b-16x2-kinetics400)"
        )
    qkv_bias = _field(cfg, "qkv_bias")
    tokens = (frames // pt) * (height // ph) * (width // pw)

    conv = _conv3d(
        arrays.get(
            "vivit.embeddings.patch_embeddings.projection.weight", (d, channels, pt, ph, pw)
        ),
        arrays.get("vivit.embeddings.patch_embeddings.projection.bias", (d,)),
    )
    cls = arrays.get("vivit.embeddings.cls_token", (1, 1, d))
    pos = arrays.get("vivit.embeddings.position_embeddings", (1, tokens + 1, d))

    def linear(prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> tuple:
        w = arrays.get(f"{prefix}.weight", (out_dim, in_dim))
        if not bias:  # qkv_bias=False: zeros are the same map.
            return w, np.zeros(out_dim, np.float32)
        return w, arrays.get(f"{prefix}.bias", (out_dim,))

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return _layer_norm(arrays.get(f"{prefix}.weight", (d,)), arrays.get(f"{prefix}.bias", (d,)))

    encoder = {}
    for i in range(layers):
        p = f"vivit.encoder.layer.{i}"
        qkv = [
            linear(f"{p}.attention.attention.{n}", d, d, qkv_bias)
            for n in ("query", "key", "value")
        ]
        encoder[f"block_{i}"] = {
            "ln_attention": norm(f"{p}.layernorm_before"),
            "attention": _attention(*qkv, linear(f"{p}.attention.output.dense", d, d), heads),
            "ln_mlp": norm(f"{p}.layernorm_after"),
            "mlp": {
                "Dense_0": _dense(*linear(f"{p}.intermediate.dense", mlp, d)),
                "Dense_1": _dense(*linear(f"{p}.output.dense", d, mlp)),
            },
        }
    encoder["ln_final"] = norm("vivit.layernorm")
    params = {
        "embedding": {"conv": conv},
        "vivit": {
            # transformers adds position 0 to the CLS token; it is a constant, so fold it in.
            "cls": cls + pos[:, :1],
            "pos_embedding": pos[:, 1:],
            "encoder": encoder,
        },
    }
    module = ViViTEncoder(
        variant="spatio_temporal",
        num_layers=layers,
        hidden_size=d,
        num_heads=heads,
        mlp_dim=mlp,
        pooling="cls",
        dropout=_field(cfg, "hidden_dropout_prob"),
        attention_dropout=_field(cfg, "attention_probs_dropout_prob"),
        posemb_layout="joint",
        patch_size=(pt, ph, pw),
    )
    return module, params, (frames, height, width, channels)


def _convert_videomae(cfg: Mapping[str, Any], arrays: _Arrays) -> tuple[nn.Module, dict, tuple]:
    d = _field(cfg, "hidden_size")
    heads = _field(cfg, "num_attention_heads")
    mlp = _field(cfg, "intermediate_size")
    layers = _field(cfg, "num_hidden_layers")
    channels = _field(cfg, "num_channels")
    frames = _field(cfg, "num_frames")
    pt = _field(cfg, "tubelet_size")
    ph, pw = _pair(_field(cfg, "patch_size"), "patch_size")
    height, width = _pair(_field(cfg, "image_size"), "image_size")
    # transformers 5 renamed qkv_bias (which never covered the key) to qv_bias.
    qv_bias = _field(cfg, "qv_bias", "qkv_bias")
    mean_pooling = _field(cfg, "use_mean_pooling")
    zeros = np.zeros(d, np.float32)

    def linear(prefix: str, out_dim: int, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            arrays.get(f"{prefix}.weight", (out_dim, in_dim)),
            arrays.get(f"{prefix}.bias", (out_dim,)),
        )

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return _layer_norm(arrays.get(f"{prefix}.weight", (d,)), arrays.get(f"{prefix}.bias", (d,)))

    def qv(prefix: str, name: str, bias: str) -> tuple[np.ndarray, np.ndarray]:
        w = arrays.get(f"{prefix}.{name}.weight", (d, d))
        if not qv_bias:
            return w, zeros
        return w, arrays.get(f"{prefix}.{bias}", (d,))

    params: dict[str, Any] = {
        "embedding": {
            "conv": _conv3d(
                arrays.get(
                    "videomae.embeddings.patch_embeddings.projection.weight",
                    (d, channels, pt, ph, pw),
                ),
                arrays.get("videomae.embeddings.patch_embeddings.projection.bias", (d,)),
            )
        }
    }
    for i in range(layers):
        p = f"videomae.encoder.layer.{i}"
        params[f"block_{i}"] = {
            "ln_attention": norm(f"{p}.layernorm_before"),
            "attention": _attention(
                qv(f"{p}.attention.attention", "query", "q_bias"),
                (arrays.get(f"{p}.attention.attention.key.weight", (d, d)), zeros),
                qv(f"{p}.attention.attention", "value", "v_bias"),
                linear(f"{p}.attention.output.dense", d, d),
                heads,
            ),
            "ln_mlp": norm(f"{p}.layernorm_after"),
            "mlp": {
                "fc1": _dense(*linear(f"{p}.intermediate.dense", mlp, d)),
                "fc2": _dense(*linear(f"{p}.output.dense", d, mlp)),
            },
        }
    if mean_pooling:
        params["fc_norm"] = norm("fc_norm")
    else:
        params["ln_final"] = norm("videomae.layernorm")
    module = VideoMAE(
        num_layers=layers,
        hidden_size=d,
        num_heads=heads,
        mlp_dim=mlp,
        patch_size=(pt, ph, pw),
        pooling="mean" if mean_pooling else "first",
        layer_norm_epsilon=_field(cfg, "layer_norm_eps"),
        approximate_gelu=_gelu_is_approximate(cfg),
        dropout=_field(cfg, "hidden_dropout_prob"),
        attention_dropout=_field(cfg, "attention_probs_dropout_prob"),
    )
    return module, params, (frames, height, width, channels)


def convert(
    hf_config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray]
) -> tuple[nn.Module, dict]:
    """A transformers ViViT / VideoMAE video classifier as `(module, {"params": ...})`.

    Args:
      hf_config: the model's `config.to_dict()` (or its config.json).
      state_dict: its tensors as numpy arrays, under transformers' names.

    `module.apply(variables, pixels)` with `pixels: [batch, frames, height, width, channels]`
    (the processor's normalized clip, channels last; frames and size as in hf_config) returns
    the logits `[batch, num_labels]`.
    """
    architecture = architecture_of(hf_config)
    arrays = _Arrays(state_dict, architecture)
    build = _convert_vivit if architecture == VIVIT else _convert_videomae
    encoder, encoder_params, (frames, height, width, channels) = build(hf_config, arrays)
    d = _field(hf_config, "hidden_size")
    weight = arrays.get("classifier.weight", (None, d))
    num_labels = weight.shape[0]
    classifier = _dense(weight, arrays.get("classifier.bias", (num_labels,)))
    arrays.check_all_read()
    if "id2label" in hf_config and len(hf_config["id2label"]) != num_labels:
        raise ValueError(
            f"hf_config['id2label'] names {len(hf_config['id2label'])} labels; "
            f"state_dict['classifier.weight'] has {num_labels} rows"
        )
    module = PixelClassifier(encoder, num_labels)
    params = {"encoder": encoder_params, "classifier": classifier}
    _check_tree(module, params, (1, frames, height, width, channels))
    return module, {"params": jax.tree.map(jnp.asarray, params)}


def _check_tree(module: nn.Module, params: dict, pixels_shape: tuple[int, ...]) -> None:
    """The converted tree must be exactly the module's (names and shapes); else this file lags
    behind the module's code, which is a bug, not a user error."""
    want = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(pixels_shape, jnp.float32))
    )["params"]
    want_shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(want)}
    got_shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(params)}
    if want_shapes != got_shapes:
        diff = sorted(set(want_shapes.items()) ^ set(got_shapes.items()))
        raise AssertionError(f"converted parameters differ from {type(module.encoder)}: {diff}")


def _load_torch_bin(file: pathlib.Path) -> dict[str, np.ndarray]:
    if importlib.util.find_spec("torch") is None:
        raise ValueError(
            f"{file} is a PyTorch pickle and torch is not installed; save the model with "
            "safetensors (save_pretrained's default) or install torch"
        )
    import torch  # Optional: only for folders without safetensors.

    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}


def read_config(path: str | pathlib.Path) -> dict:
    """The config.json of a transformers `save_pretrained` folder."""
    config_file = pathlib.Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{path} has no config.json; expected a folder written by transformers' "
            "save_pretrained (config.json + model.safetensors)"
        )
    return _read_json_object(config_file)


def _read_json_object(file: pathlib.Path) -> dict:
    """The JSON object in `file`; ValueError naming the file when it is not JSON or no object."""
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} holds {type(value).__name__}; expected a JSON object")
    return value


def _load_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file} is not a readable safetensors file ({e})") from None


def load_folder(path: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """`(hf_config, state_dict)` of a transformers `save_pretrained` folder, for `convert`."""
    folder = pathlib.Path(path)
    hf_config = read_config(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return hf_config, _load_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_load_safetensors(folder / shard))
        return hf_config, state
    if (folder / "pytorch_model.bin").is_file():
        return hf_config, _load_torch_bin(folder / "pytorch_model.bin")
    raise ValueError(
        f"{folder} has config.json but no weights; expected model.safetensors, "
        "model.safetensors.index.json with its shards, or pytorch_model.bin"
    )


def pixel_normalization(
    architecture: str, processor: Mapping[str, Any] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(pixel_mean, pixel_std) on [0, 1] pixels with which `(x - mean) / std` is the processor's
    pixel_values.

    The processor maps p in [0, 255] to ((p r - o) - m) / s (r: rescale_factor, o: 1 with
    ViViT's `offset`, else 0; m, s: image_mean, image_std; r = 1, o = 0 without do_rescale and
    m = 0, s = 1 without do_normalize). With x = p / 255 that is
    (x - (o + m) / (255 r)) / (s / (255 r)). processor: its preprocessor_config.json (None: the
    processor class's defaults).
    """
    cfg = _PROCESSOR_DEFAULTS[architecture] | dict(processor or {})
    rescale = float(cfg["rescale_factor"]) if cfg["do_rescale"] else 1.0
    offset = 1.0 if cfg["do_rescale"] and cfg.get("offset", False) else 0.0
    mean, std = [0.0] * 3, [1.0] * 3
    if cfg["do_normalize"]:
        mean, std = cfg["image_mean"], cfg["image_std"]
        mean = [mean] * 3 if isinstance(mean, int | float) else list(mean)
        std = [std] * 3 if isinstance(std, int | float) else list(std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or rescale <= 0:
        raise ValueError(
            f"{PROCESSOR_CONFIG}: image_mean={mean}, image_std={std}, rescale_factor={rescale}; "
            "expected 3 means, 3 positive stds and a positive rescale_factor"
        )
    scale = 255.0 * rescale
    return (
        tuple(round((offset + m) / scale, 12) for m in mean),
        tuple(round(s / scale, 12) for s in std),
    )


@dataclasses.dataclass(frozen=True)
class RegistryModel:
    """A converted checkpoint as a run's config describes it, and its parameters.

    model: the config's `model` section (build_model(model, num_classes) builds it);
    params: that model's parameter tree; encoder: its encoder's top-level subtree name;
    labels: the checkpoint's class names by index (id2label), or None.
    """

    architecture: str
    model: dict
    params: dict
    encoder: str
    num_frames: int
    image_size: tuple[int, int]
    num_classes: int
    labels: list[str] | None


def _fields(module: nn.Module) -> dict:
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    }


def labels_of(hf_config: Mapping[str, Any], num_labels: int) -> list[str] | None:
    """id2label as a list by index; None where it has only transformers' LABEL_<i> placeholders."""
    id2label = hf_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels)]
    return None if names == [f"LABEL_{i}" for i in range(num_labels)] else names


def for_registry(
    hf_config: Mapping[str, Any],
    state_dict: Mapping[str, np.ndarray],
    processor: Mapping[str, Any] | None = None,
) -> RegistryModel:
    """`convert`'s weights as the registry model 'vivit_pixels' or 'videomae_pixels'.

    processor: the folder's preprocessor_config.json (None: the processor class's defaults),
    whose rescaling and normalization become the model's pixel_mean / pixel_std.
    """
    architecture = architecture_of(hf_config)
    module, variables = convert(hf_config, state_dict)
    params = variables["params"]
    mean, std = pixel_normalization(architecture, processor)
    encoder = ENCODER_MODULES[architecture]
    fields = _fields(module.encoder)
    if architecture == VIVIT:
        fields.pop("tokens_per_frame")  # frame features only; vivit_pixels reads pixels
        model = {"name": REGISTRY_NAMES[architecture], **fields}
    else:
        model = {"name": REGISTRY_NAMES[architecture], encoder: fields}
    model |= {"pixel_mean": mean, "pixel_std": std}
    height, width = _pair(_field(hf_config, "image_size"), "image_size")
    return RegistryModel(
        architecture=architecture,
        model=model,
        params={encoder: params["encoder"], "head": {"logits": params["classifier"]}},
        encoder=encoder,
        num_frames=int(_field(hf_config, "num_frames")),
        image_size=(height, width),
        num_classes=module.num_classes,
        labels=labels_of(hf_config, module.num_classes),
    )


def load_processor(path: str | pathlib.Path) -> dict | None:
    """The folder's preprocessor_config.json, or None where it has none."""
    file = pathlib.Path(path) / PROCESSOR_CONFIG
    if not file.is_file():
        return None
    return _read_json_object(file)
