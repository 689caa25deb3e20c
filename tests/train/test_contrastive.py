"""The retrieval trainer on a tiny embedded dataset, against embeddings recomputed here.

One module-scoped run trains 24 steps (evaluating and checkpointing every 12). The reference
reads the validate records and captions itself, applies JointEmbedding to the restored
parameters and ranks in numpy; the trainer's metrics, the index and the resume must match it.
"""

import csv
import glob
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vmjax import metrics, retrieval
from vmjax.data import synthetic, text, tfrecord, yt8m
from vmjax.models.retrieval import JointEmbedding
from vmjax.train import contrastive

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYNTHETIC = dict(seed=0, num_train=256, num_validate=128, min_frames=4, max_frames=12)
SHARDS = dict(num_train_shards=2, num_validate_shards=1)
STEPS = 24
RETRIEVAL_KEYS = {
    f"{d}/{k}"
    for d in ("text_to_video", "video_to_text")
    for k in ("r@1", "r@5", "r@10", "median_rank", "mean_rank")
}


def get_config(cache_dir: str):
    path = ROOT / "configs" / "retrieval.py"
    spec = importlib.util.spec_from_file_location("retrieval_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("smoke")
    c.data.cache_dir = cache_dir
    c.data.synthetic.update(SYNTHETIC)
    c.data.synthetic.update(SHARDS)  # Spec fields the config does not list
    c.data.max_frames = 12
    c.data.max_caption_tokens = 16
    c.data.caption_vocab_size = 512
    c.data.shuffle_buffer = 64
    c.batch_size = 32
    c.eval_batch_size = 32
    c.num_train_steps = STEPS
    c.eval_every = 12
    c.checkpoint_every = 12
    c.log_every = 6
    c.model.embed_dim = 16
    c.model.hidden_size = 16
    c.model.text_embed_dim = 16
    c.model.vivit.hidden_size = 16
    c.model.vivit.mlp_dim = 32
    c.optimizer.learning_rate = 1e-2
    c.optimizer.warmup_steps = 4
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    config = get_config(str(root / "cache"))
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    data_dir = str(root / "cache" / spec.key())
    synthetic.generate(data_dir, spec, workers=1, log=lambda *_: None)  # no worker processes
    workdir = str(root / "w")
    result = contrastive.train_and_evaluate(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir, result=result, data_dir=data_dir)


# --- the reference: records and captions read here, the model applied here.


def _validate_inputs(config, data_dir: str, workdir: str) -> dict:
    tokenizer = text.Tokenizer.load(os.path.join(workdir, "vocabulary.json"))
    with open(os.path.join(data_dir, "captions", "validate.csv"), newline="") as f:
        captions = {row["id"]: row["caption"] for row in csv.DictReader(f)}
    examples = []
    for path in sorted(glob.glob(os.path.join(data_dir, "frame", "validate-*.tfrecord"))):
        examples += [
            yt8m.decode_frame_example(payload, segments=False)
            for _, _, payload in tfrecord.read_records(path)
        ]
    n, t, length = len(examples), config.data.max_frames, config.data.max_caption_tokens
    out = {
        "ids": np.array([ex["id"] for ex in examples]),
        "rgb": np.zeros((n, t, 1024), np.float32),
        "audio": np.zeros((n, t, 128), np.float32),
        "mask": np.zeros((n, t), bool),
        "text_tokens": np.zeros((n, length), np.int32),
        "text_mask": np.zeros((n, length), bool),
        "labels": np.zeros((n, config.data.num_classes), np.uint8),
    }
    for i, ex in enumerate(examples):
        frames = len(ex["rgb"][:t])
        out["rgb"][i, :frames] = yt8m.dequantize(ex["rgb"][:t])
        out["audio"][i, :frames] = yt8m.dequantize(ex["audio"][:t])
        out["mask"][i, :frames] = True
        ids = tokenizer.encode(captions[ex["id"]], None)[:length]
        out["text_tokens"][i, : len(ids)] = ids
        out["text_mask"][i, : len(ids)] = True
        out["labels"][i, ex["labels"]] = 1
    out["tokenizer"] = tokenizer
    return out


def _model(config) -> JointEmbedding:
    m = config.model
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
    )


def _class_queries(data_dir, labels, tokenizer, length):
    """Named classes among the labels, in class order, as padded query tokens."""
    with open(os.path.join(data_dir, "classes.csv"), newline="") as f:
        names = {int(r["Index"]): r["Name"] for r in csv.DictReader(f) if r["Name"]}
    classes = np.array([c for c in np.flatnonzero(labels.any(0)) if c in names])
    tokens = np.zeros((len(classes), length), np.int32)
    for row, c in enumerate(classes):
        ids = tokenizer.encode(f"a video of {names[c].lower()}", None)[:length]
        tokens[row, : len(ids)] = ids
    return classes, tokens, tokens > 0


def _restored_params(workdir: str, step: int):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]


@pytest.fixture(scope="module")
def reference(run):
    inputs = _validate_inputs(run.config, run.data_dir, run.workdir)
    model = _model(run.config)
    classes, q_tokens, q_mask = _class_queries(
        run.data_dir, inputs["labels"], inputs["tokenizer"], run.config.data.max_caption_tokens
    )
    model_inputs = {k: inputs[k] for k in ("rgb", "audio", "mask", "text_tokens", "text_mask")}

    @jax.jit
    def embed(params):
        out = model.apply({"params": params}, model_inputs, train=False)
        queries = model.apply(
            {"params": params}, q_tokens, q_mask, train=False, method=JointEmbedding.embed_text
        )
        return out["video"], out["text"], queries

    def evaluate(params) -> dict:
        video, caption, queries = (np.asarray(x, np.float64) for x in embed(params))
        sim = caption @ video.T
        ranks = (sim >= np.diag(sim)[:, None]).sum(1)  # pessimistic ties, by hand
        return {
            "video": video,
            "text": caption,
            "hand_r@10": float(np.mean(ranks <= 10)),
            "metrics": metrics.text_video_retrieval(sim),
            "loss": contrastive.infonce_np(video, caption, float(params["log_scale"])),
            "zero_shot_gap": metrics.gap(video @ queries.T, inputs["labels"][:, classes]),
        }

    _, _, placement = contrastive.setup(run.config)
    untrained = jax.device_get(placement.init().params)  # the trainer's initialisation
    return types.SimpleNamespace(
        ids=inputs["ids"],
        labels=inputs["labels"],
        trained=evaluate(_restored_params(run.workdir, STEPS)),
        untrained=evaluate(untrained),
    )


def _metrics(workdir):
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


def test_metrics_jsonl_has_the_retrieval_keys_and_checkpoints_exist(run):
    lines = _metrics(run.workdir)
    assert [m["step"] for m in lines] == [12, STEPS]
    assert RETRIEVAL_KEYS | {"loss", "zero_shot_gap", "train_loss", "num_videos"} <= set(lines[0])
    assert all(m["num_videos"] == SYNTHETIC["num_validate"] for m in lines)
    assert sorted(os.listdir(os.path.join(run.workdir, "checkpoints"))) == ["12", str(STEPS)]
    assert any(e.startswith("events.out") for e in os.listdir(f"{run.workdir}/tensorboard"))
    assert run.result["step"] == STEPS
    assert run.result["chance/r@10"] == 10 / SYNTHETIC["num_validate"]
    summary = contrastive.summary(run.result)
    assert "text->video: R@1" in summary and "chance 0.078" in summary


def test_training_improves_loss_and_recall_over_the_untrained_model(reference):
    before, after = reference.untrained, reference.trained
    assert after["loss"] < before["loss"] - 0.2, (before["loss"], after["loss"])
    r10 = "text_to_video/r@10"
    assert after["metrics"][r10] > before["metrics"][r10] + 0.05
    assert after["metrics"][r10] > 1.5 * 10 / SYNTHETIC["num_validate"]  # chance: k / N


def test_trainer_metrics_equal_metrics_on_independent_embeddings(run, reference):
    got = _metrics(run.workdir)[-1]
    want = reference.trained
    n = SYNTHETIC["num_validate"]
    for key in RETRIEVAL_KEYS:
        # The same embeddings up to float rounding: at most one near-tie may rank otherwise.
        tol = 1.01 / n if "/r@" in key else 1.01
        assert got[key] == pytest.approx(want["metrics"][key], abs=tol), key
    assert got["text_to_video/r@10"] == pytest.approx(want["hand_r@10"], abs=1.01 / n)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert got["zero_shot_gap"] == pytest.approx(want["zero_shot_gap"], abs=2e-3)


def test_build_index_top_k_equals_brute_force_and_is_reused(run, reference):
    index = retrieval.build_index(run.workdir)
    assert len(index) == SYNTHETIC["num_validate"]
    order = {video_id: i for i, video_id in enumerate(reference.ids)}
    rows = np.array([order[i] for i in index.ids])
    video, captions = reference.trained["video"], reference.trained["text"]
    np.testing.assert_allclose(index.embeddings(), video[rows], atol=2e-5)
    hits = index.search(captions[:20].astype(np.float32), 5)
    want = np.argsort(-(captions[:20] @ video.T), axis=1, kind="stable")[:, :5]
    agree = np.mean(hits.ids == reference.ids[want])
    assert agree > 0.97, agree  # float32 vs float64 near-ties only
    names = synthetic.class_names(run.data_dir, run.config.data.num_classes)
    first = order[str(index.ids[0])]
    want_names = "; ".join(
        names[c] or f"class {c}" for c in np.flatnonzero(reference.labels[first])
    )
    assert index.classes[0] == want_names
    stamp = os.stat(os.path.join(run.workdir, "index.npz")).st_mtime_ns
    again = retrieval.build_index(run.workdir)  # loaded, not rebuilt
    assert os.stat(os.path.join(run.workdir, "index.npz")).st_mtime_ns == stamp
    np.testing.assert_array_equal(again.ids, index.ids)


def test_resume_from_the_middle_checkpoint_continues_at_its_step(run, tmp_path, caplog):
    copy = str(tmp_path / "w")
    shutil.copytree(run.workdir, copy, ignore=shutil.ignore_patterns("index.*"))
    shutil.rmtree(os.path.join(copy, "checkpoints", str(STEPS)))
    lines = _metrics(run.workdir)
    with open(os.path.join(copy, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(lines[0]) + "\n")
    caplog.set_level(logging.INFO)
    result = contrastive.train_and_evaluate(run.config, copy)
    assert "Resuming from checkpoint" in caplog.text and "(step 12 of 24)" in caplog.text
    assert [m["step"] for m in _metrics(copy)] == [12, STEPS]
    assert result["step"] == STEPS
    # The same batches from the restored data iterator: the same parameters at the end.
    a, b = _restored_params(run.workdir, STEPS), _restored_params(copy, STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert result["loss"] == pytest.approx(lines[-1]["loss"], rel=1e-5)
