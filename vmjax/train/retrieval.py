"""Text-to-video retrieval training: JointEmbedding + symmetric InfoNCE on captioned videos.

Data: the embedded dataset's frame-level features (vmjax.data.synthetic) and its captions
(vmjax.data.captions), one caption per video. Each batch's `caption_tokens` / `caption_mask`
become the model's `text_tokens` / `text_mask`; the records' own `text_tokens` (a YT8M-style
keyword feature) are not used. Every other video of the batch is a pair's negative.

Padding rows (weight 0) are masked out of the loss (`infonce_loss(..., weights=)`): they are
no pair's negatives. The training stream batches with `drop_remainder`, so there are none today.

Steps: vmjax.train.contrastive (`jax.jit` over the repo's ('data', 'fsdp') Mesh,
the batch sharded over both axes, the state donated). The jitted step sees global arrays, so
`infonce_loss` without an axis name already contrasts every pair with the whole global batch
(XLA inserts the gathers); that is the all-gather loss of the shard_map form.

Evaluation (every `eval_every` steps, on the validate split): every validate video and its
caption are embedded; on the `[texts, videos]` cosine matrix, text->video and video->text
R@1/5/10, median and mean rank (vmjax.metrics.text_video_retrieval), and the InfoNCE loss over
all validate pairs. Zero-shot classification embeds one query per named class present in the
validate labels ("a video of {name}", config.zero_shot_template) and scores each video by its
cosine to each class: GAP@20 against the observed validate labels on those classes' columns.
Chance levels: R@k = k / num_videos; zero-shot GAP of uniform random scores (seeded) and of the
validate label frequencies as every video's scores (the class prior; it peeks at the labels).

Outputs as the classifier's loop: WORKDIR/metrics.jsonl (one line per evaluation), TensorBoard
events, orbax checkpoints with the data iterator state (resumed automatically), config.json
(with the resolved dataset directory) and vocabulary.json (the caption tokenizer), so that
vmjax.retrieval.build_index and `--mode retrieve` need only the workdir. Several processes
(jax.distributed) each read their share of the files; the step's negatives are the global
batch's, and evaluation embeddings (with their ids) come back whole to every process.

Text tower (config.model.text_tower): 'lstm' reads the caption vocabulary's word ids; 'minilm'
is a pretrained MiniLM (vmjax.models.minilm, config.model.minilm_checkpoint) whose params are
loaded once here and put into the initial params under 'text_tower' (a resume restores them
from the run's checkpoint like any params). Its captions, zero-shot queries and `--query` text
are WordPiece-tokenized by the checkpoint's tokenizer (no [UNK] for ordinary words), padded to
one fixed length, the smallest of `minilm.length_buckets` holding data.max_caption_tokens, so
the jitted steps compile once. With model.freeze_text_tower the tower runs deterministically
without gradient and optax.set_to_zero keeps its params exactly the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax
import tokenizers
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vmjax import metrics
from vmjax import run as run_lib
from vmjax.data import captions, pipeline, synthetic, text
from vmjax.data.device import DTYPES, cast_floats, model_inputs
from vmjax.errors import RunDirectoryError
from vmjax.models import minilm
from vmjax.models.retrieval import TEXT_TOWERS, JointEmbedding, infonce_loss, logit_scale
from vmjax.train import contrastive, parallel
from vmjax.train import fit as fit_lib
from vmjax.train import state as state_lib
from vmjax.train.checkpoint import restore_checkpoint
from vmjax.train.contrastive import Placement

VOCABULARY = "vocabulary.json"  # the caption tokenizer, copied into the workdir
RECALL_KS = metrics.RECALL_KS
LOGGED = (
    [f"{d}/{k}" for d in ("text_to_video", "video_to_text") for k in ("r@1", "r@5", "r@10")]
    + [f"{d}/{k}" for d in ("text_to_video", "video_to_text") for k in ("median_rank", "mean_rank")]
    + ["loss", "zero_shot_gap", "zero_shot_gap_random", "zero_shot_gap_prior"]
)
_RANDOM_SCORES_SEED = 0


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails fast on settings this trainer does not support."""
    if config.data.level != "frame":
        raise ValueError(
            f"config.data.level={config.data.level!r}: the retrieval video tower reads frame "
            "sequences; set it to 'frame'"
        )
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}; expected one of {sorted(DTYPES)}")
    parallel.local_batch_size(config.batch_size)
    parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")
    if config.model.text_embed_dim < 1 or config.data.caption_vocab_size < 3:
        raise ValueError("config.model.text_embed_dim >= 1 and data.caption_vocab_size >= 3")
    if config.model.text_tower not in TEXT_TOWERS:
        raise ValueError(
            f"config.model.text_tower={config.model.text_tower!r}; expected one of {TEXT_TOWERS}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class MiniLMTokenizer:
    """A MiniLM checkpoint's WordPiece tokenizer, padding every text to one bucket length."""

    tokenizer: tokenizers.Tokenizer  # as minilm.load_sentence_transformer returns it
    folder: str  # the checkpoint, for messages and config.json

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def length(self, max_tokens: int) -> int:
        """The fixed pad length: the smallest of `minilm.length_buckets` >= max_tokens."""
        truncation = self.tokenizer.truncation
        longest = truncation["max_length"] if truncation else max_tokens
        return next(b for b in minilm.length_buckets(longest) if b >= min(max_tokens, longest))

    def tokenize(self, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 ids and bool mask `[len(texts), length(max_tokens)]`; longer texts truncated.

        Truncation keeps [CLS] and [SEP], as sentence-transformers truncates at max_seq_length.
        """
        length = self.length(max_tokens)
        tokenizer = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())  # a truncating copy
        tokenizer.enable_truncation(length)
        tokens, mask = minilm.tokenize(texts, tokenizer, length)
        return tokens, mask.astype(bool)

    def unknown_words(self, query: str) -> list[str]:
        """The whitespace-separated words of `query` whose every WordPiece is [UNK]."""
        unk = self.tokenizer.token_to_id("[UNK]")
        words = []
        for word in query.split():
            ids = self.tokenizer.encode(word, add_special_tokens=False).ids
            if ids and all(i == unk for i in ids):
                words.append(word)
        return words


@functools.lru_cache(maxsize=2)
def _load_minilm(folder: str) -> minilm.Checkpoint:
    return minilm.load_sentence_transformer(folder)


def minilm_checkpoint(config: ml_collections.ConfigDict) -> tuple[str, minilm.Checkpoint]:
    """(folder, checkpoint) of config.model.minilm_checkpoint ('' = minilm.default_checkpoint)."""
    folder = config.model.minilm_checkpoint or str(minilm.default_checkpoint())
    folder = os.path.abspath(os.path.expanduser(folder))
    return folder, _load_minilm(folder)


def text_tokenizer(config: ml_collections.ConfigDict, caption_tokenizer: text.Tokenizer):
    """What tokenizes captions and queries: the caption vocabulary, or MiniLM's WordPiece."""
    if config.model.text_tower != "minilm":
        return caption_tokenizer
    folder, checkpoint = minilm_checkpoint(config)
    return MiniLMTokenizer(checkpoint.tokenizer, folder)


def build_model(
    config: ml_collections.ConfigDict, minilm_module: minilm.MiniLM | None = None
) -> JointEmbedding:
    """The JointEmbedding `config.model` describes; its vocabulary is data.caption_vocab_size.

    minilm_module: the checkpoint's module, whose fields size the text tower when
    model.text_tower='minilm'.
    """
    m = config.model
    fields = {}
    if m.text_tower == "minilm":
        if minilm_module is None:
            raise ValueError("build_model: model.text_tower='minilm' needs the MiniLM module")
        fields = {
            "text_tower_kind": "minilm",
            "minilm": {
                f.name: getattr(minilm_module, f.name)
                for f in dataclasses.fields(minilm_module)
                if f.name not in ("parent", "name")
            },
            "freeze_text_tower": bool(m.freeze_text_tower),
        }
    return JointEmbedding(
        embed_dim=m.embed_dim,
        hidden_size=m.hidden_size,
        vivit=m.vivit.to_dict(),
        text_vocab_size=config.data.caption_vocab_size,
        text_embed_dim=m.text_embed_dim,
        fusion=m.fusion,
        modalities=m.modalities,
        fusion_layers=m.fusion_layers,
        fusion_layer=m.fusion_layer,
        num_bottlenecks=m.num_bottlenecks,
        **fields,
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The run's AdamW; a frozen MiniLM text tower gets zero updates (set_to_zero) instead.

    Weight decay applies to kernels and embeddings only, not to biases, LayerNorm scales or the
    learned temperature `log_scale` (decaying it would pull the scale towards 1).
    """
    tx = state_lib.make_optimizer(
        config.optimizer, config.num_train_steps, decay_matrices_only=True
    )
    if config.model.text_tower != "minilm" or not config.model.freeze_text_tower:
        return tx

    def labels(params):
        return {
            name: jax.tree.map(lambda _, n=name: "frozen" if n == "text_tower" else "train", tree)
            for name, tree in params.items()
        }

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def batch_spec(config: ml_collections.ConfigDict) -> pipeline.BatchSpec:
    return pipeline.BatchSpec.from_config(config.data)


def model_batch(batch: dict) -> dict:
    """The device part of a captioned batch: captions as the model's text_tokens/text_mask."""
    return {
        "rgb": batch["rgb"],
        "audio": batch["audio"],
        "mask": batch["mask"],
        "text_tokens": batch["caption_tokens"],
        "text_mask": batch["caption_mask"],
        "labels": batch["labels"],
        "weights": batch["weights"],
    }


def example_batch(
    config: ml_collections.ConfigDict, batch_size: int = 1, length: int | None = None
) -> dict:
    """A zero model batch with the shapes the captioned pipeline produces.

    length: the caption length; default data.max_caption_tokens (a MiniLM tower's is a bucket).
    """
    batch = pipeline.example_batch(batch_spec(config), batch_size)
    length = length or config.data.max_caption_tokens
    batch["caption_tokens"] = np.zeros((batch_size, length), np.int32)
    batch["caption_mask"] = np.zeros((batch_size, length), bool)
    return model_batch(batch)


def train_step(
    state: state_lib.TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: JointEmbedding,
    tx: optax.GradientTransformation,
    dtype: str = "float32",
) -> tuple[state_lib.TrainState, dict]:
    """One optimizer step on the symmetric InfoNCE loss of the (global) batch.

    rng: this step's dropout key. The temperature is the float32 parameter itself (not the
    bfloat16 copy), so its gradient and clip behave the same in both dtypes.
    """
    compute_dtype = DTYPES[dtype]

    def loss_fn(params):
        out = model.apply(
            {"params": cast_floats(params, compute_dtype)},
            model_inputs(batch, compute_dtype),
            train=True,
            rngs={"dropout": rng},
        )
        return infonce_loss(
            out["video"], out["text"], params["log_scale"], weights=batch["weights"]
        )

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "scale": logit_scale(params["log_scale"]),
    }


def embed_step(params, batch: dict, *, model: JointEmbedding, dtype: str = "float32") -> dict:
    """Unit video and caption embeddings `[B, E]` of a batch, with its labels and weights."""
    compute_dtype = DTYPES[dtype]
    out = model.apply(
        {"params": cast_floats(params, compute_dtype)},
        model_inputs(batch, compute_dtype),
        train=False,
    )
    return {
        "video": out["video"],
        "text": out["text"],
        "labels": batch["labels"],
        "weights": batch["weights"],
    }


def embed_text_step(
    params, tokens: jax.Array, mask: jax.Array, *, model: JointEmbedding, dtype: str = "float32"
) -> jax.Array:
    """Unit text embeddings `[B, E]` of `tokens`, `mask`: `[B, L]`."""
    variables = {"params": cast_floats(params, DTYPES[dtype])}
    return model.apply(variables, tokens, mask, train=False, method=JointEmbedding.embed_text)


def init_state(model, tx, inputs: dict, rng: jax.Array, text_params=None) -> state_lib.TrainState:
    """`state_lib.create_train_state`, with `text_params` (if given) as params['text_tower']."""
    state = state_lib.create_train_state(model, tx, inputs, rng)
    if text_params is None:
        return state
    want = jax.tree.map(lambda x: (x.shape, x.dtype), state.params["text_tower"])
    got = jax.tree.map(lambda x: (x.shape, x.dtype), text_params)
    if want != got:
        raise ValueError(
            f"the MiniLM checkpoint's params do not fit the text tower: expected {want}, got {got}"
        )
    params = {**state.params, "text_tower": text_params}
    return state.replace(params=params, opt_state=tx.init(params))


def place(
    config: ml_collections.ConfigDict,
    model: JointEmbedding,
    tx,
    text_params=None,
    caption_length: int | None = None,
) -> Placement:
    """The steps of `config` jitted on its mesh (contrastive.place).

    text_params: the pretrained text tower's params for the initial state (MiniLM).
    caption_length: the caption tokens' length (default data.max_caption_tokens).
    """
    inputs = model_inputs(example_batch(config, length=caption_length))
    return contrastive.place(
        config,
        init=functools.partial(init_state, model, tx),
        init_args=(inputs, jax.random.PRNGKey(config.seed), text_params),
        train_step=functools.partial(train_step, model=model, tx=tx, dtype=config.dtype),
        embed_step=functools.partial(embed_step, model=model, dtype=config.dtype),
        model_batch=model_batch,
        embed_text_step=functools.partial(embed_text_step, model=model, dtype=config.dtype),
    )


def setup(config: ml_collections.ConfigDict) -> tuple[JointEmbedding, object, Placement]:
    """(model, optimizer, placement) of `config`, memoized by the config's JSON.

    Jitted functions compile once per function object, so a second run of the same config in
    this process (a resume, an index build after training) reuses the compiled steps.
    """
    return contrastive.memoized(config, _build)


def _build(config: ml_collections.ConfigDict) -> tuple[JointEmbedding, object, Placement]:
    module, text_params, length = None, None, None
    if config.model.text_tower == "minilm":
        folder, checkpoint = minilm_checkpoint(config)
        module, text_params = checkpoint.module, checkpoint.params
        length = MiniLMTokenizer(checkpoint.tokenizer, folder).length(
            config.data.max_caption_tokens
        )
    model = build_model(config, module)
    tx = make_optimizer(config)
    return model, tx, place(config, model, tx, text_params, length)


def prepare_data(config: ml_collections.ConfigDict, log=logging.info) -> tuple[str, text.Tokenizer]:
    """(embedded dataset directory, caption tokenizer), generating data and captions once."""
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    data_dir = synthetic.ensure(config.data.cache_dir, spec, log=log)
    captions.ensure_captions(data_dir, log=log)
    return data_dir, captions.caption_tokenizer(data_dir, config.data.caption_vocab_size)


def split_files(data_dir: str, split: str) -> list[str]:
    if split not in synthetic.SPLITS:
        raise ValueError(f"split={split!r}; expected one of {synthetic.SPLITS}")
    train, validate = synthetic.patterns(data_dir, "frame")
    return pipeline.resolve_files(train if split == "train" else validate, f"{split} split")


def caption_table(path: str, tokenizer, max_tokens: int) -> captions.CaptionTable:
    """The captions of `path` tokenized by the run's text tokenizer (see `text_tokenizer`)."""
    if not isinstance(tokenizer, MiniLMTokenizer):
        return captions.CaptionTable.build(path, tokenizer, max_tokens)
    table = captions.read_captions(path)
    tokens, mask = tokenizer.tokenize(list(table.values()), max_tokens)
    rows = {video_id: row for row, video_id in enumerate(table)}
    return captions.CaptionTable(path, rows, tokens, mask.sum(axis=1, dtype=np.int32))


@dataclasses.dataclass
class Embedded:
    """A split's real videos (padding rows dropped), in file order."""

    ids: np.ndarray  # str [N]
    video: np.ndarray  # float32 [N, E], unit rows
    text: np.ndarray  # float32 [N, E], each video's caption, unit rows
    labels: np.ndarray  # uint8 [N, num_classes], observed labels


def embed_split(
    embed: Callable,
    params,
    config: ml_collections.ConfigDict,
    data_dir: str,
    tokenizer: text.Tokenizer,
    split: str,
) -> Embedded:
    """Every video of `split` and its caption through `embed(params, batch)` (Placement.embed)."""
    table = caption_table(
        captions.caption_path(data_dir, split), tokenizer, config.data.max_caption_tokens
    )
    batch_size = parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")
    files = pipeline.shard_files(split_files(data_dir, split), *_process())
    batches = captions.eval_batches(files, batch_spec(config), batch_size=batch_size, table=table)
    parts: dict[str, list] = {"ids": [], "video": [], "text": [], "labels": []}
    for batch in _in_step(batches):
        out = embed(params, batch)  # the global batch's rows, on every process
        real = np.asarray(out["weights"]) > 0
        parts["ids"].append(gather_ids(batch["ids"])[real])
        for key in ("video", "text", "labels"):
            parts[key].append(np.asarray(out[key])[real])
    result = Embedded(*(np.concatenate(parts[k]) for k in ("ids", "video", "text", "labels")))
    if not np.isfinite(result.video).all() or not np.isfinite(result.text).all():
        raise FloatingPointError("embeddings are NaN/Inf: the parameters have diverged")
    return result


def _process() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def _in_step(batches):
    """This process's eval batches; with several processes, until every process is done.

    Every process must join each (collective) embedding step, so one whose share ran out joins
    with empty batches (weight 0, id '') until the last one finishes.
    """
    if jax.process_count() == 1:
        yield from batches
        return
    from jax.experimental import multihost_utils

    empty = None  # shaped as this process's last batch (a MiniLM tower's caption length)
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if not multihost_utils.process_allgather(np.array(batch is not None)).any():
            return
        if batch is not None:
            empty = {k: np.zeros_like(v) for k, v in batch.items() if k != "ids"}
            empty["ids"] = np.full(len(batch["ids"]), "", object)
        yield batch if batch is not None else empty


_ID_BYTES = 64  # YT8M ids are 4-11 characters; longer ids are an error


def gather_ids(ids: np.ndarray) -> np.ndarray:
    """The global batch's video ids (in the order of its rows) from this process's `ids`."""
    if jax.process_count() == 1:
        return np.asarray(ids)
    from jax.experimental import multihost_utils

    encoded = [str(i).encode() for i in np.asarray(ids).tolist()]
    if any(len(e) > _ID_BYTES for e in encoded):
        raise ValueError(f"a video id is longer than {_ID_BYTES} bytes: {max(encoded, key=len)}")
    codes = np.frombuffer(np.array(encoded, f"S{_ID_BYTES}").tobytes(), np.uint8)
    codes = codes.reshape(len(encoded), _ID_BYTES)
    every = np.asarray(multihost_utils.process_allgather(codes, tiled=True))
    return np.array([bytes(row).rstrip(b"\0").decode() for row in every], object)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded int32 ids and their mask, `[len(texts), max_tokens]` each.

    tokenizer: the caption vocabulary, or a MiniLMTokenizer (its bucket length, not max_tokens).
    """
    if isinstance(tokenizer, MiniLMTokenizer):
        return tokenizer.tokenize(texts, max_tokens)
    tokens = np.zeros((len(texts), max_tokens), np.int32)
    for row, s in enumerate(texts):
        ids = tokenizer.encode(s, max_tokens)
        tokens[row, : len(ids)] = ids
    return tokens, tokens != text.PAD_ID


def embed_texts(
    embed_text: Callable,
    params,
    tokenizer: text.Tokenizer,
    texts: list[str],
    max_tokens: int,
    batch_size: int,
) -> np.ndarray:
    """Unit embeddings `[len(texts), E]`, in chunks of `batch_size` rows (one compiled shape)."""
    tokens, mask = tokenize(tokenizer, texts, max_tokens)
    n = len(texts)
    padded = -(-max(n, 1) // batch_size) * batch_size
    tokens = np.pad(tokens, ((0, padded - n), (0, 0)))
    mask = np.pad(mask, ((0, padded - n), (0, 0)))
    out = [
        embed_text(params, tokens[s : s + batch_size], mask[s : s + batch_size])
        for s in range(0, padded, batch_size)
    ]
    return np.concatenate(out)[:n]


def retrieval_results(
    embedded: Embedded,
    class_embeddings: np.ndarray,
    classes: np.ndarray,
    log_scale: float,
) -> dict:
    """Both retrieval directions, the all-pairs loss, and zero-shot GAP@20 with its chances."""
    similarity = embedded.text @ embedded.video.T  # [texts, videos]
    out = metrics.text_video_retrieval(similarity)
    out["loss"] = contrastive.infonce_np(embedded.video, embedded.text, log_scale)
    labels = embedded.labels[:, classes]
    out["zero_shot_gap"] = metrics.gap(embedded.video @ class_embeddings.T, labels)
    rng = np.random.default_rng(_RANDOM_SCORES_SEED)
    out["zero_shot_gap_random"] = metrics.gap(rng.random(labels.shape, np.float32), labels)
    prior = labels.mean(axis=0, dtype=np.float64).astype(np.float32)
    out["zero_shot_gap_prior"] = metrics.gap(np.broadcast_to(prior, labels.shape), labels)
    out["num_videos"] = len(embedded.ids)
    out["num_zero_shot_classes"] = len(classes)
    for k in RECALL_KS:
        out[f"chance/r@{k}"] = min(k / len(embedded.ids), 1.0)
    return out


def evaluate(
    place: Placement,
    params,
    config: ml_collections.ConfigDict,
    data_dir: str,
    tokenizer: text.Tokenizer,
) -> dict:
    """Retrieval and zero-shot metrics of `params` on the validate split (see module doc)."""
    embedded = embed_split(place.embed, params, config, data_dir, tokenizer, "validate")
    classes, queries = captions.class_queries(data_dir, "validate", config.zero_shot_template)
    class_embeddings = embed_texts(
        place.embed_text,
        params,
        tokenizer,
        queries,
        config.data.max_caption_tokens,
        config.eval_batch_size,
    )
    log_scale = float(np.asarray(jax.device_get(params["log_scale"])))
    return retrieval_results(embedded, class_embeddings, classes, log_scale)


def _resolved(config, data_dir: str, tokenizer: text.Tokenizer) -> dict:
    """What a retrieval run resolved to, kept in its config.json."""
    resolved = {
        "embedded_data_dir": data_dir,
        "caption_vocabulary": captions.vocabulary_path(data_dir),
        "caption_vocab_ids": tokenizer.vocab_size,
        "jax_devices": len(jax.devices()),
    }
    if config.model.text_tower == "minilm":
        resolved["minilm_checkpoint"] = minilm_checkpoint(config)[0]
    return resolved


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow: tuple[str, ...] = ()
) -> dict | None:
    """Trains the joint embedding, evaluates every `eval_every` steps, checkpoints, resumes.

    allow: config keys that may differ from an existing run's stored config (vmjax.run).
    Returns the last evaluation (from metrics.jsonl when the run was already complete).
    """
    check_config(config)
    run_lib.Run.check_resume(config, workdir, allow)  # before anything is written
    data_dir, caption_tokenizer = prepare_data(config)
    resolved = _resolved(config, data_dir, caption_tokenizer)
    is_main = jax.process_index() == 0
    with run_lib.training(config, workdir, resolved, allow=allow, main_process=is_main) as run:
        if is_main:
            shutil.copyfile(captions.vocabulary_path(data_dir), run.path(VOCABULARY))
        tokenizer = text_tokenizer(config, caption_tokenizer)

        _, _, place_ = setup(config)
        logging.info("Text tokenizer of %d ids", tokenizer.vocab_size)
        table = caption_table(
            captions.caption_path(data_dir, "train"), tokenizer, config.data.max_caption_tokens
        )
        d = config.data
        train_iter = iter(
            captions.train_dataset(
                pipeline.shard_files(split_files(data_dir, "train"), *_process()),
                batch_spec(config),
                table=table,
                batch_size=parallel.local_batch_size(config.batch_size),
                seed=config.seed,
                shuffle_buffer=d.shuffle_buffer,
                cycle_length=d.cycle_length,
                prefetch=d.prefetch,
                workers=d.workers,
            )
        )
        task = contrastive.task(
            place_,
            config,
            evaluate=lambda params: evaluate(place_, params, config, data_dir, tokenizer),
            log_eval=_log_eval,
            desc="train retrieval",
        )
        return fit_lib.fit(config, run, task, train_iter)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict:
    """Retrieval and zero-shot metrics of checkpoint `step` (default: the newest good one) on
    the run's validate split, as training evaluates; written to WORKDIR/eval/step_N.json."""
    trained = load_trained(workdir, config, step)
    metrics_ = evaluate(
        trained.place, trained.params, trained.config, trained.data_dir, trained.tokenizer
    )
    result = {"step": trained.step, **metrics_}
    contrastive.write_eval(os.path.abspath(os.path.expanduser(workdir)), result)
    return result


def _log_eval(result: dict, writer, progress) -> None:
    keys = ["step", "train_loss", *LOGGED, "num_videos"]
    writer.eval_line({k: result[k] for k in keys})
    progress.write(
        f"step {result['step']}: text->video R@1 {result['text_to_video/r@1']:.3f} "
        f"R@5 {result['text_to_video/r@5']:.3f} R@10 {result['text_to_video/r@10']:.3f} "
        f"medR {result['text_to_video/median_rank']:.0f}  video->text R@1 "
        f"{result['video_to_text/r@1']:.3f} R@10 {result['video_to_text/r@10']:.3f}  "
        f"zero-shot GAP {result['zero_shot_gap']:.4f}  loss {result['loss']:.3f}  "
        f"({result['num_videos']} videos)"
    )


def summary(result: dict) -> str:
    """The final evaluation with chance levels, for the console."""
    n = result["num_videos"]
    lines = [f"Final retrieval evaluation (step {result['step']}, {n} validate videos):"]
    lines += contrastive.recall_lines(
        result, {"text_to_video": "text->video", "video_to_text": "video->text"}
    )
    lines.append(
        f"  zero-shot GAP@20 {result['zero_shot_gap']:.4f} (random scores "
        f"{result['zero_shot_gap_random']:.4f}, class prior {result['zero_shot_gap_prior']:.4f})"
    )
    lines.append(f"  validate InfoNCE {result['loss']:.3f} (uniform: ln {n} = {np.log(n):.3f})")
    return "\n".join(lines)


# --- a trained run, for vmjax.retrieval.build_index and `--mode retrieve`.


@dataclasses.dataclass
class Trained:
    """A restored run: its config, model, parameters (on the devices) and text tokenizer."""

    config: ml_collections.ConfigDict
    step: int
    params: object
    place: Placement
    tokenizer: text.Tokenizer | MiniLMTokenizer  # see `text_tokenizer`
    data_dir: str


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of a retrieval run (vmjax.run: config.json with its recorded changes)."""
    return run_lib.Run.open(workdir, task="retrieval").config


_MUST_MATCH = {  # what shapes the checkpoint or the caption tokens
    "model": lambda c: c.model.to_dict(),
    "data.caption_vocab_size": lambda c: c.data.caption_vocab_size,
    "data.max_caption_tokens": lambda c: c.data.max_caption_tokens,
}


def load_trained(
    workdir: str, config: ml_collections.ConfigDict | None = None, step: int | None = None
) -> Trained:
    """Restores checkpoint `step` (default: the latest) of a retrieval run in `workdir`.

    config: default the one the run saved; the tokenizer is the run's WORKDIR/vocabulary.json,
      or for a MiniLM text tower the checkpoint's WordPiece tokenizer.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    saved = read_config(workdir)
    if config is None:
        config = saved
    else:
        for what, get in _MUST_MATCH.items():
            if get(config) != get(saved):
                raise RunDirectoryError(
                    f"the config's {what} {get(config)} differs from the run's "
                    f"({workdir}: {get(saved)}); pass the run's config"
                )
    check_config(config)
    vocabulary = os.path.join(workdir, VOCABULARY)
    if not os.path.exists(vocabulary):
        raise RunDirectoryError(f"{vocabulary} does not exist: train the run first (--mode train)")
    tokenizer = text_tokenizer(config, text.Tokenizer.load(vocabulary))
    data_dir = run_lib.Run.open(workdir).resolved["embedded_data_dir"]
    _, _, place_ = setup(config)
    shapes = jax.eval_shape(place_.init)  # parameters from shapes; never the optimizer state
    like = {"params": shapes.params, "step": shapes.step}
    like = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(place_.mesh, P())),
        like,
    )
    state, step = restore_checkpoint(
        os.path.join(workdir, run_lib.CHECKPOINTS), like, step, partial=True
    )
    return Trained(config, step, state["params"], place_, tokenizer, data_dir)
