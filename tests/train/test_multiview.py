"""Multi-view eval and predict of a pixel model: 2 x 3 views against six 1-view evaluations."""

import csv
import os

import jax
import numpy as np
import pytest

from vmjax import metrics
from vmjax.configs import vivit_pixels
from vmjax.data import synthetic_video, video, video_files
from vmjax.data.device import model_inputs
from vmjax.data.views import ViewSpec
from vmjax.errors import UserError
from vmjax.models import build_model
from vmjax.train import evaluate, inference, parallel
from vmjax.train import state as state_lib

CLIPS = [[0, 1, 2, 3], [6, 7, 8, 9]]  # stride sampling, 4 of 10 frames, 2 clips: by hand
LEFTS = [0, 8, 16]  # 32-pixel crops of a 48-pixel-wide frame: start, centre, end
ROWS = 12  # eval_batch_size: 2 videos x 6 views


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 videos of 10 frames of 32 x 48 pixels, and a label CSV listing them."""
    d = tmp_path_factory.mktemp("multiview")
    rows = []
    for i in range(3):
        clip = synthetic_video.sample_clip(np.random.default_rng([7, i]), 32)
        frames = synthetic_video.render_frames(clip, num_frames=10, size=32)
        frames = np.concatenate([frames, frames[:, :, ::-1][:, :, :16]], axis=2)
        synthetic_video.write_mp4(d / f"v{i}.mp4", frames, fps=4.0)
        rows.append((f"v{i}.mp4", " ".join(map(str, clip.labels))))
    with open(d / "videos.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "labels"), *rows])
    csv_path = str(d / "videos.csv")
    return csv_path, video_files.read_label_csv(csv_path, len(synthetic_video.CLASSES))


def _config(csv_path, num_clips=2, num_crops=3, average="prob"):
    c = vivit_pixels.get_config("smoke")
    c.data.train_pattern = c.data.eval_pattern = csv_path
    c.data.num_frames, c.data.image_size = 4, 32
    c.data.sampling, c.data.frame_stride = "stride", 1
    c.data.read_threads = 1
    c.eval_batch_size = ROWS
    c.eval.num_clips, c.eval.num_crops, c.eval.average = num_clips, num_crops, average
    return c


@pytest.fixture(scope="module")
def model(data):
    """A placed ViViT with random parameters large enough that the views score differently."""
    config = _config(data[0])
    net = build_model(config.model, config.data.num_classes)
    example = video_files.empty_batch(batch_size=ROWS, num_classes=11, num_frames=4, size=32)
    # Random normal parameters of the model's shapes: nothing to compile but the eval step.
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), model_inputs(example), train=False))
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda x: rng.normal(0.0, 0.5, x.shape).astype(np.float32), shapes["params"]
    )
    state = state_lib.TrainState(
        step=np.int32(0),
        params=params,
        opt_state=None,
        model_state={},
        rng=None,
    )
    par = parallel.create(config, net, None)
    return par, par.put_state(state)


def _eval_fn(par):
    return lambda state, batch: par.eval_step(state, par.put_batch(batch))


@pytest.fixture(scope="module")
def single_views(data, model):
    """Each video's six views cut by hand from a full decode, each scored as a 1-view clip."""
    par, state = model
    _, items = data
    pixels, labels = [], []
    for path, classes in items:
        every = video.decode_video(path, num_frames=10, sampling="stride", size=None)["frames"]
        assert every.shape == (10, 32, 48, 3)  # the short side is the crop side: no scaling
        for clip in CLIPS:
            for left in LEFTS:
                pixels.append(every[clip][:, :, left : left + 32])
                labels.append(classes)
    out = {"scores": [], "logits": [], "loss_sum": 0.0, "count": 0.0}
    for start in range(0, len(pixels), ROWS):
        batch = video_files.empty_batch(batch_size=ROWS, num_classes=11, num_frames=4, size=32)
        for r, (p, c) in enumerate(zip(pixels[start : start + ROWS], labels[start:], strict=False)):
            batch["pixels"][r], batch["mask"][r], batch["weights"][r] = p, True, 1.0
            batch["labels"][r, list(c)] = 1
        step = par.eval_step(state, par.put_batch(batch))
        n = min(ROWS, len(pixels) - start)
        out["scores"].append(np.asarray(step["scores"])[:n])
        out["logits"].append(np.asarray(step["logits"])[:n])
        out["loss_sum"] += float(step["loss_sum"])
        out["count"] += float(step["count"])
    scores = np.concatenate(out["scores"]).reshape(3, 6, 11)
    logits = np.concatenate(out["logits"]).reshape(3, 6, 11).astype(np.float64)
    assert np.ptp(scores, axis=1).max() > 0.05  # the views really differ
    averaged = {
        "prob": scores.mean(1),
        "score": 1 / (1 + np.exp(-logits.mean(1))),
    }
    targets = np.zeros([3, 11], np.float32)
    for i, (_, classes) in enumerate(items):
        targets[i, list(classes)] = 1
    return averaged, targets, out["loss_sum"] / out["count"]


@pytest.mark.parametrize("average", ["prob", "score"])
def test_eval_of_2x3_views_equals_the_mean_of_six_single_views(data, model, single_views, average):
    par, state = model
    csv_path, items = data
    averaged, targets, loss = single_views
    config = _config(csv_path, average=average)
    result = evaluate.evaluate(
        _eval_fn(par), state, items, config, per_class=True, views=ViewSpec.from_config(config)
    )
    want = metrics.Evaluator(11, threshold=0.5)
    want.update(averaged[average], targets)
    want = want.result()
    assert result["num_videos"] == 3
    for key in ("gap", "map", "hit_at_1", "perr", "precision", "recall", "f1"):
        np.testing.assert_allclose(result[key], want[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)  # the mean over all 18 views

    # One view per video is what it was: the first clip's centre crop.
    one = evaluate.evaluate(_eval_fn(par), state, items, _config(csv_path, 1, 1), per_class=True)
    plain = evaluate.evaluate(_eval_fn(par), state, items, _config(csv_path, 1, 1), views=None)
    assert one["gap"] == plain["gap"] and one["loss"] == plain["loss"]
    assert one["gap"] != result["gap"]


def test_predict_writes_the_averaged_scores_once_per_video(
    data, model, single_views, tmp_path, monkeypatch
):
    par, state = model
    csv_path, items = data
    averaged, _, _ = single_views
    monkeypatch.setattr(inference, "restore", lambda config, workdir, step: (par, state, 0))
    out = inference.predict(_config(csv_path), str(tmp_path), out=str(tmp_path / "p.csv"))
    with open(out) as f:
        rows = list(csv.reader(f))[1:]
    assert [os.path.basename(r[0]) for r in rows] == ["v0.mp4", "v1.mp4", "v2.mp4"]
    for i, (_, pairs) in enumerate(rows):
        pairs = pairs.split()
        classes, scores = np.array(pairs[::2], int), np.array(pairs[1::2], float)
        np.testing.assert_allclose(scores, averaged["prob"][i, classes], atol=1e-6)
        assert classes[0] == np.argmax(averaged["prob"][i])


def test_views_that_do_not_fill_the_eval_batch_are_refused_before_restoring(data, tmp_path):
    config = _config(data[0], num_clips=5)  # 15 views; eval_batch_size 12
    with pytest.raises(UserError, match="eval_batch_size=12: expected a multiple of 15"):
        inference.predict(config, str(tmp_path / "no_run"))
    with pytest.raises(UserError, match="eval_batch_size=12: expected a multiple of 15"):
        inference.evaluate_checkpoint(config, str(tmp_path / "no_run"))
