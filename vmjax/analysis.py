"""Checkpoint analysis: load a run's workdir, score validation videos, and plot what it learned.

    run = Run.load("/tmp/w")
    plot_training_curves(run)
    batch = run.validation_batch(256)
    plot_ap_vs_frequency(run, batch)

Plots are built on `matplotlib.figure.Figure` (no pyplot, no GUI backend) and returned, so they
work under Agg, in scripts and in notebooks alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from vmjax import metrics, trained
from vmjax.data import pipeline, synthetic
from vmjax.data.device import model_inputs
from vmjax.train import inputs
from vmjax.train import state as state_lib

MODALITIES = ("rgb", "audio", "text")


@dataclasses.dataclass
class Run:
    """A training run's workdir, loaded: config, metrics history, model and restored state."""

    workdir: str
    config: ml_collections.ConfigDict
    resolved: dict  # config.json's "resolved" entry (files, embedded_data_dir, devices)
    metrics: list[dict]  # metrics.jsonl, one dict per evaluation
    model: object  # flax.linen.Module
    state: state_lib.TrainState
    step: int
    eval_files: list[str]
    data_dir: str | None  # the embedded dataset's directory, None for real data
    class_names: list[str]
    kinds: dict[str, np.ndarray] | None  # kind -> class indices (embedded data only)
    oracle: dict | None  # the embedded data's oracle.json

    @classmethod
    def load(cls, workdir: str, step: int | None = None) -> Run:
        """Loads `workdir` and restores the checkpoint at `step` (default: the latest)."""
        loaded = trained.load(workdir, step)
        workdir, config, model, step = (
            loaded.run.workdir,
            loaded.config,
            loaded.model,
            loaded.step,
        )
        state = state_lib.TrainState(
            step=np.int32(step),
            params=loaded.params,
            opt_state=None,
            model_state=loaded.model_state,
            rng=None,
        )
        _, eval_files, data_dir = inputs.resolve_data(config)
        data_dir = data_dir or loaded.run.resolved.get("embedded_data_dir")
        num_classes = config.data.num_classes
        kinds = synthetic.class_kinds(data_dir) if data_dir else None
        oracle = synthetic.read_oracle(data_dir) if data_dir else None
        names = synthetic.class_names(data_dir, num_classes)
        names = [name or f"class {i}" for i, name in enumerate(names)]
        return cls(
            workdir=workdir,
            config=config,
            resolved=loaded.run.resolved,
            metrics=loaded.run.metrics(),
            model=model,
            state=state,
            step=int(step),
            eval_files=eval_files,
            data_dir=data_dir,
            class_names=names,
            kinds=kinds,
            oracle=oracle,
        )

    def history(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric over the evaluations that logged it."""
        lines = [m for m in self.metrics if key in m]
        return np.array([m["step"] for m in lines]), np.array([m[key] for m in lines], float)

    def validation_batch(self, n: int) -> dict:
        """The first `n` validation videos as one batch (fewer if the split is smaller)."""
        spec = pipeline.BatchSpec.from_config(self.config.data)
        batch = next(inputs.eval_stream(self.config, spec, self.eval_files, n))
        keep = batch["weights"] > 0  # the pipeline pads a short split with zero-weight rows
        return {k: v[keep] for k, v in batch.items()}

    def predict(self, inputs: dict) -> np.ndarray:
        """Class probabilities `[B, C]` for model inputs (as `model_inputs` makes them)."""
        return np.asarray(self._forward(self.state.params, self.state.model_state, inputs))

    def scores(self, batch: dict) -> np.ndarray:
        """Class probabilities `[B, C]` of a batch (train=False)."""
        return self.predict(model_inputs(batch))

    @functools.cached_property
    def _forward(self):
        def forward(params, model_state, inputs):
            logits = self.model.apply({"params": params, **model_state}, inputs, train=False)
            return jax.nn.sigmoid(logits.astype(jnp.float32))

        return jax.jit(forward)


def per_class_ap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-class AP as in YT8M's mAP@k (vmjax.metrics.Evaluator): NaN for classes with no
    positive. Each video keeps its top `k` classes; positives outside them count as misses."""
    scores = np.asarray(scores, np.float32)
    evaluator = metrics.Evaluator(scores.shape[1], k)
    evaluator.update(scores, np.asarray(labels) != 0)
    return evaluator.per_class_ap()[0]


def ablated_inputs(inputs: dict, drop: tuple[str, ...]) -> dict:
    """A copy of model inputs with the `drop` modalities (rgb, audio, text) removed.

    rgb and audio are zeroed after dequantization; text keeps its tokens at 0 and its mask off.
    """
    unknown = set(drop) - set(MODALITIES)
    if unknown:
        raise ValueError(f"ablated_inputs: unknown modalities {sorted(unknown)}; use {MODALITIES}")
    out = dict(inputs)
    for key in ("rgb", "audio"):
        if key in drop:
            out[key] = jnp.zeros_like(inputs[key])
    if "text" in drop and "text_tokens" in inputs:
        out["text_tokens"] = jnp.zeros_like(inputs["text_tokens"])
        out["text_mask"] = jnp.zeros_like(inputs["text_mask"])
    return out


ABLATIONS = {
    "all inputs": (),
    "rgb zeroed": ("rgb",),
    "audio zeroed": ("audio",),
    "text masked": ("text",),
    "all zeroed": MODALITIES,
}


def modality_ablation(run: Run, batch: dict) -> dict[str, float]:
    """GAP@20 on `batch` with all inputs and with each modality (then all) removed."""
    inputs = model_inputs(batch)
    return {
        name: metrics.gap(run.predict(ablated_inputs(inputs, drop)), batch["labels"])
        for name, drop in ABLATIONS.items()
    }


def frame_saliency(run: Run, batch: dict, video: int = 0) -> dict[str, np.ndarray]:
    """Per valid frame of one video: rgb/audio L2 norms and gradient-times-input saliency.

    Saliency is d(top class score)/d(input) * input, summed over each frame's features: a
    first-order estimate of how much each frame pushed the top class, for any frame model.
    Returns rgb_norm, audio_norm, rgb_saliency, audio_saliency ([frames]) and top_class.
    """
    if run.config.data.level != "frame":
        raise ValueError(
            f"frame_saliency needs a frame-level run; {run.workdir} has "
            f"config.data.level={run.config.data.level!r}"
        )
    one = {k: v[video : video + 1] for k, v in batch.items()}
    inputs = model_inputs(one)
    top = int(np.argmax(run.predict(inputs)[0]))

    def top_score(features):
        x = {**inputs, **features}
        logits = run.model.apply(
            {"params": run.state.params, **run.state.model_state}, x, train=False
        )
        return jax.nn.sigmoid(logits[0, top])

    features = {"rgb": inputs["rgb"], "audio": inputs["audio"]}
    grads = jax.grad(top_score)(features)
    frames = int(one["num_frames"][0])
    out = {"top_class": top}
    for key in ("rgb", "audio"):
        x = np.asarray(features[key][0, :frames])
        out[f"{key}_norm"] = np.linalg.norm(x, axis=-1)
        out[f"{key}_saliency"] = (np.asarray(grads[key][0, :frames]) * x).sum(-1)
    return out


def plot_training_curves(run: Run) -> Figure:
    """Eval GAP and mAP (and the oracle's GAP, dashed) and eval loss against step."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_gap, ax_loss = fig.subplots(1, 2)
    for key, label in (("gap", "GAP@20"), ("map", "mAP")):
        ax_gap.plot(*run.history(key), marker="o", label=label)
    if run.oracle:
        ax_gap.axhline(run.oracle["gap"], ls="--", color="gray", label="oracle GAP")
    ax_gap.set(xlabel="step", ylabel="validation metric", ylim=(0, 1))
    ax_gap.legend(loc="lower right")
    ax_loss.plot(*run.history("loss"), marker="o", color="C3")
    ax_loss.set(xlabel="step", ylabel="validation loss")
    fig.suptitle(f"{run.config.model.name}: {os.path.basename(run.workdir)}")
    return fig


def plot_ap_vs_frequency(run: Run, batch: dict) -> Figure:
    """Per-class AP on `batch` against the class's label count there (log x), by class kind."""
    ap = per_class_ap(run.scores(batch), batch["labels"])
    count = np.asarray(batch["labels"]).sum(0)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    groups = run.kinds or {"all classes": np.arange(len(ap))}
    for name, cols in groups.items():
        cols = cols[count[cols] > 0]
        if len(cols):
            ax.scatter(count[cols], ap[cols], s=10, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="label count in batch", ylabel="per-class AP@20", ylim=(-0.02, 1.02))
    videos = len(batch["labels"])
    ax.set_title(f"Per-class AP on {videos} videos ({int((count > 0).sum())} classes present)")
    ax.legend(fontsize="small")
    return fig


def plot_gap_by_kind(run: Run) -> Figure:
    """The last evaluation's GAP per class kind next to the oracle's (embedded data only)."""
    if not run.kinds or not run.metrics:
        raise ValueError(
            f"{run.workdir}: GAP by kind needs a run on the embedded data with metrics.jsonl"
        )
    last = run.metrics[-1]
    kinds = [k for k in synthetic.KINDS if f"gap_{k}" in last]
    x = np.arange(len(kinds))
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, [last[f"gap_{k}"] for k in kinds], 0.4, label=f"model (step {last['step']})")
    if run.oracle:
        ax.bar(x + 0.2, [run.oracle[f"gap_{k}"] for k in kinds], 0.4, label="oracle", alpha=0.6)
    ax.set_xticks(x, kinds)
    ax.set(ylabel="GAP@20 within the kind's classes", ylim=(0, 1.15))
    ax.set_title("GAP by class kind")
    ax.legend(fontsize="small", loc="upper center", ncols=2)
    return fig


def plot_modality_ablation(ablation: dict[str, float]) -> Figure:
    """Bars of `modality_ablation`'s GAP per input variant."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    names = list(ablation)
    ax.barh(names[::-1], [ablation[n] for n in names[::-1]])
    ax.set(xlabel="GAP@20", xlim=(0, 1))
    ax.set_title("Modality ablation: GAP with inputs removed")
    return fig


def plot_weights_over_time(run: Run, batch: dict, video: int = 0) -> Figure:
    """Per-frame feature norms and gradient-times-input saliency of one video's top class."""
    s = frame_saliency(run, batch, video)
    frames = np.arange(len(s["rgb_norm"]))
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax_norm, ax_sal = fig.subplots(2, 1, sharex=True)
    ax_norm.plot(frames, s["rgb_norm"], label="rgb")
    ax_norm.plot(frames, s["audio_norm"], label="audio")
    ax_norm.set(ylabel="feature L2 norm")
    ax_norm.legend(fontsize="small")
    ax_sal.plot(frames, s["rgb_saliency"], label="rgb")
    ax_sal.plot(frames, s["audio_saliency"], label="audio")
    ax_sal.set(xlabel="frame", ylabel="grad x input")
    ax_sal.legend(fontsize="small")
    name = run.class_names[s["top_class"]] or f"class {s['top_class']}"
    fig.suptitle(
        f"Video {video}: per-frame feature norm and gradient-times-input saliency "
        f"of its top class ({name})",
        fontsize="medium",
    )
    return fig
