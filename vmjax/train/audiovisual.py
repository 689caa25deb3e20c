"""Audio-visual contrastive pretraining: rgb and audio encoders learned without labels.

Each step embeds a batch of videos' rgb frames and audio frames (vmjax.models.audiovisual) and
minimises the symmetric InfoNCE between them: video i's rgb must pick out video i's audio among
the global batch's, and vice versa. Each modality is seen through its own random view (a window
of `pretrain.crop_frames` frames, then frame dropout: `views`), since rgb and audio share one
mask and would otherwise be matched by frame count and timing alone. `pretrain.within_modal`
adds the same loss between two views of one modality (rgb-rgb, audio-audio), so what is seen
but not heard (or heard but not seen) stays in the embeddings: without it the encoders' linear
probe fell below a probe of random encoders in the zoo (docs/results.md).

The labels are never read: `model_batch` sends only rgb, audio, mask and weights to the
devices, and the evaluation measures how well each modality finds its own video's other
modality on the eval split (audio->rgb and rgb->audio R@1/5/10, median and mean rank, the
all-pairs cross-modal InfoNCE of the full, uncropped videos), which needs no labels either.

The encoders are the `Multimodal` classifier's (same module names and fields: config.model is
configs/yt8m.py's multimodal block), so a classifier run with `init_from.workdir=THIS_RUN`
starts from them (vmjax.train.pretrained); `freeze='rgb,audio'` makes that a linear probe of the
fused (concatenated) embedding. configs/audiovisual.py has the presets, benchmarks/zoo.py the
study rows.

Data as the classifier's: config.data (YT8M frame-level TFRecords or ArrayRecord, or the
embedded dataset), read by vmjax.train.loop's streams and sharded like them; padding rows are
masked out of the loss. Steps, checkpoints, resume, TensorBoard and metrics.jsonl:
vmjax.train.contrastive. Several processes (jax.distributed) each read their share of the
files; the jitted step sees the global batch, so every video's negatives are the whole global
batch's, and the evaluation's embeddings come back replicated to every process.
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import optax

from vmjax import metrics, trained
from vmjax import run as run_lib
from vmjax.data import augment, pipeline
from vmjax.data.device import DTYPES, cast_floats, model_inputs
from vmjax.models.audiovisual import MODALITIES, AudioVisual
from vmjax.models.retrieval import infonce_loss, logit_scale
from vmjax.train import contrastive, inputs, parallel
from vmjax.train import fit as fit_lib
from vmjax.train import state as state_lib
from vmjax.train.contrastive import Placement

TASK = "audiovisual"
DIRECTIONS = ("audio_to_rgb", "rgb_to_audio")
LOGGED = [
    f"{d}/{k}" for d in DIRECTIONS for k in ("r@1", "r@5", "r@10", "median_rank", "mean_rank")
] + ["loss"]


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails fast on settings this trainer does not support."""
    if config.get("task") != TASK:
        raise ValueError(f"config.task={config.get('task')!r}; this trainer runs {TASK!r}")
    if config.data.level != "frame":
        raise ValueError(
            f"config.data.level={config.data.level!r}: the rgb and audio encoders read frame "
            "sequences; set it to 'frame'"
        )
    if config.data.format == "video_files":
        raise ValueError("audio-visual pretraining reads YT8M features, not video files")
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}; expected one of {sorted(DTYPES)}")
    parallel.local_batch_size(config.batch_size)
    parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")
    p = config.pretrain
    if p.embed_dim < 1 or p.crop_frames < 0 or not 0 <= p.frame_dropout < 1:
        raise ValueError(
            f"config.pretrain: embed_dim={p.embed_dim}, crop_frames={p.crop_frames}, "
            f"frame_dropout={p.frame_dropout}; expected embed_dim >= 1, crop_frames >= 0 "
            "(0: no crop) and 0 <= frame_dropout < 1"
        )


def build_model(config: ml_collections.ConfigDict) -> AudioVisual:
    """The AudioVisual model: config.model's encoders, config.pretrain.embed_dim wide."""
    return AudioVisual(
        embed_dim=config.pretrain.embed_dim,
        hidden_size=config.model.hidden_size,
        vivit=config.model.vivit.to_dict(),
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW; weight decay on kernels only (not biases, norm scales or the temperature)."""
    return state_lib.make_optimizer(
        config.optimizer, config.num_train_steps, decay_matrices_only=True
    )


def model_batch(batch: dict) -> dict:
    """What the devices see of a batch: frames, mask and weights; never the labels."""
    return {k: batch[k] for k in ("rgb", "audio", "mask", "weights")}


def train_step(
    state: state_lib.TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: AudioVisual,
    tx: optax.GradientTransformation,
    dtype: str = "float32",
    crop_frames: int = 0,
    frame_dropout: float = 0.0,
    within_modal: float = 0.0,
) -> tuple[state_lib.TrainState, dict]:
    """One optimizer step on the symmetric rgb-audio InfoNCE of the (global) batch.

    The rgb and audio of each video are seen through independent views (`views`), so the loss
    cannot match them by their length or the timing of their frames, only by content. With
    `within_modal` > 0 a second view of each modality is embedded too and that weight times the
    mean of the rgb-rgb and audio-audio InfoNCE (the same video's two views as the pair) is
    added: it keeps what is seen but not heard (and heard but not seen) in the embeddings.
    """
    compute_dtype = DTYPES[dtype]
    view_rng, dropout_rng = jax.random.split(rng)
    first = views(view_rng, batch, crop_frames=crop_frames, frame_dropout=frame_dropout)
    if within_modal:
        second = views(
            jax.random.fold_in(view_rng, 1),
            batch,
            crop_frames=crop_frames,
            frame_dropout=frame_dropout,
        )

    def loss_fn(params):
        def embed(inputs, key):
            return model.apply(
                {"params": cast_floats(params, compute_dtype)},
                model_inputs(inputs, compute_dtype),
                train=True,
                rngs={"dropout": key},
            )

        def infonce(a, b):
            return infonce_loss(a, b, params["log_scale"], weights=batch["weights"])

        out = embed(first, dropout_rng)
        loss = infonce(out["rgb"], out["audio"])
        if within_modal:
            other = embed(second, jax.random.fold_in(dropout_rng, 1))
            same = 0.5 * (infonce(out["rgb"], other["rgb"]) + infonce(out["audio"], other["audio"]))
            loss = loss + within_modal * same
        return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "scale": logit_scale(params["log_scale"]),
    }


def views(rng: jax.Array, batch: dict, *, crop_frames: int, frame_dropout: float) -> dict:
    """`batch` with `rgb_mask` / `audio_mask`: each modality's own random view of the video.

    Per modality and video, independently: a random window of `crop_frames` consecutive valid
    frames moved to the front (all frames of a shorter video; 0 = no crop), then each valid
    frame dropped with probability `frame_dropout` (never all). Both modalities share one
    mask in the data (YT8M frames are 1 s of rgb and audio together), so without this a video's
    frame count and event positions alone would match its rgb to its audio.
    """
    out = dict(batch)
    for m, key in zip(MODALITIES, jax.random.split(rng, len(MODALITIES)), strict=True):
        crop_key, drop_key = jax.random.split(key)
        frames, mask = batch[m], batch["mask"]
        if crop_frames:
            frames, mask = augment.random_temporal_crop(crop_key, frames, mask, crop_frames)
        if frame_dropout:
            mask = augment.frame_dropout(drop_key, mask, frame_dropout)
        out[m], out[f"{m}_mask"] = frames, mask
    return out


def embed_step(params, batch: dict, *, model: AudioVisual, dtype: str = "float32") -> dict:
    """Unit rgb and audio embeddings `[B, E]` of a batch, with its weights."""
    compute_dtype = DTYPES[dtype]
    out = model.apply(
        {"params": cast_floats(params, compute_dtype)},
        model_inputs(batch, compute_dtype),
        train=False,
    )
    return {"rgb": out["rgb"], "audio": out["audio"], "weights": batch["weights"]}


def setup(config: ml_collections.ConfigDict) -> tuple[AudioVisual, object, Placement]:
    """(model, optimizer, the steps jitted on the config's mesh), memoized by the config."""
    return contrastive.memoized(config, _build)


def _build(config: ml_collections.ConfigDict) -> tuple[AudioVisual, object, Placement]:
    model = build_model(config)
    tx = make_optimizer(config)
    example = pipeline.config_example_batch(config.data)
    inputs = model_inputs(model_batch(example))
    place_ = contrastive.place(
        config,
        init=functools.partial(state_lib.create_train_state, model, tx),
        init_args=(inputs, jax.random.PRNGKey(config.seed)),
        train_step=functools.partial(
            train_step,
            model=model,
            tx=tx,
            dtype=config.dtype,
            crop_frames=config.pretrain.crop_frames,
            frame_dropout=config.pretrain.frame_dropout,
            within_modal=config.pretrain.within_modal,
        ),
        embed_step=functools.partial(embed_step, model=model, dtype=config.dtype),
        model_batch=model_batch,
    )
    return model, tx, place_


def embed_files(place_: Placement, params, config, files: list[str]) -> dict[str, np.ndarray]:
    """Unit rgb and audio embeddings `[N, E]` of every real video of `files`, in file order."""
    spec = pipeline.BatchSpec.from_config(config.data)
    parts = {m: [] for m in MODALITIES}
    batch_size = parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")
    batches = inputs.eval_stream(config, spec, files, batch_size)
    # Each process embeds its files' share; the embeddings come back as the global batch's.
    for batch in inputs.eval_batches_in_step(batches, config.data, batch_size):
        out = place_.embed(params, batch)
        real = np.asarray(out["weights"]) > 0
        for m in MODALITIES:
            parts[m].append(np.asarray(out[m])[real])
    embedded = {m: np.concatenate(parts[m]) for m in MODALITIES}
    if not all(np.isfinite(x).all() for x in embedded.values()):
        raise FloatingPointError("embeddings are NaN/Inf: the parameters have diverged")
    return embedded


def pair_results(rgb: np.ndarray, audio: np.ndarray, log_scale: float) -> dict:
    """Cross-modal retrieval of each video's own other modality, and the all-pairs loss."""
    similarity = audio @ rgb.T  # [audio queries, rgb items]
    out = {}
    for direction, sim in (("audio_to_rgb", similarity), ("rgb_to_audio", similarity.T)):
        out |= {f"{direction}/{k}": v for k, v in metrics.retrieval_metrics(sim).items()}
    out["loss"] = contrastive.infonce_np(rgb, audio, log_scale)
    out["num_videos"] = len(rgb)
    for k in metrics.RECALL_KS:
        out[f"chance/r@{k}"] = min(k / len(rgb), 1.0)
    return out


def evaluate(place_: Placement, params, config, files: list[str]) -> dict:
    embedded = embed_files(place_, params, config, files)
    log_scale = float(np.asarray(jax.device_get(params["log_scale"])))
    return pair_results(embedded["rgb"], embedded["audio"], log_scale)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow: tuple[str, ...] = ()
) -> dict | None:
    """Pretrains, evaluates every `eval_every` steps, checkpoints, resumes (see module doc)."""
    check_config(config)
    run_lib.Run.check_resume(config, workdir, allow)  # before anything is written
    train_files, eval_files, data_dir = inputs.resolve_data(config)
    resolved = inputs.resolved_info(train_files, eval_files, data_dir)
    is_main = jax.process_index() == 0
    with run_lib.training(config, workdir, resolved, allow=allow, main_process=is_main) as run:
        _, _, place_ = setup(config)
        spec = pipeline.BatchSpec.from_config(config.data)
        local_batch = parallel.local_batch_size(config.batch_size)
        train_iter = inputs.train_stream(config, spec, train_files, local_batch)
        task = contrastive.task(
            place_,
            config,
            evaluate=lambda params: evaluate(place_, params, config, eval_files),
            log_eval=_log_eval,
            desc="pretrain audio-visual",
        )
        return fit_lib.fit(config, run, task, train_iter)


# What shapes the checkpoints: a config for `--mode eval` must agree with the run's on these.
_MUST_MATCH = ("model", "pretrain.embed_dim", "data.level", "data.max_frames", "dtype")


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict:
    """The recall metrics of checkpoint `step` (default: the newest good one) of a pretraining
    run on its eval data, as training evaluates; written to WORKDIR/eval/step_N.json."""
    run = run_lib.Run.open(workdir, task=TASK)
    trained.check_config(config, run.config, run.workdir, _MUST_MATCH, "pass the run's config")
    check_config(config)
    _, eval_files, _ = inputs.resolve_data(config)
    _, _, place_ = setup(config)
    params, step = contrastive.restore_params(place_, run, step)
    result = {"step": step, **evaluate(place_, params, config, eval_files)}
    contrastive.write_eval(run.workdir, result)
    return result


def _log_eval(result: dict, writer, progress) -> None:
    keys = ["step", "train_loss", *LOGGED, "num_videos"]
    writer.eval_line({k: result[k] for k in keys})
    progress.write(
        f"step {result['step']}: audio->rgb R@1 {result['audio_to_rgb/r@1']:.3f} "
        f"R@10 {result['audio_to_rgb/r@10']:.3f} medR {result['audio_to_rgb/median_rank']:.0f}  "
        f"rgb->audio R@1 {result['rgb_to_audio/r@1']:.3f} R@10 {result['rgb_to_audio/r@10']:.3f}  "
        f"loss {result['loss']:.3f}  ({result['num_videos']} videos)"
    )


def summary(result: dict) -> str:
    """The final evaluation with chance levels, for the console."""
    n = result["num_videos"]
    lines = [f"Final audio-visual evaluation (step {result['step']}, {n} eval videos):"]
    lines += contrastive.recall_lines(result, {d: d.replace("_to_", "->") for d in DIRECTIONS})
    lines.append(f"  eval InfoNCE {result['loss']:.3f} (uniform: ln {n} = {np.log(n):.3f})")
    return "\n".join(lines)
