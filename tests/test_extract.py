"""vmjax.extract: own videos -> YouTube-8M records, checked against an independent computation."""

import csv
import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from vmjax import configs, extract
from vmjax.data import synthetic_video, tfrecord, video, yt8m
from vmjax.models.cnn import FrameResNet
from vmjax.train import setup
from vmjax.train.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32  # frame side of the videos and of the run
STEP = 3  # the checkpoint's step
STEP_Q = 4 / 255  # one quantization step


def _pixel_config(arg="smoke,cnn_lstm"):
    spec = importlib.util.spec_from_file_location(
        "vivit_pixels_config", ROOT / "configs" / "vivit_pixels.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.data.image_size = SIZE
    c.data.num_frames = 2
    c.model.cnn.width = 8  # -> 64-d frame embeddings
    c.model.cnn.num_groups = 4
    c.model.hidden_size = 8
    return c


def _save_run(workdir, config):
    """A run directory as the trainer leaves it: config.json and an orbax checkpoint."""
    # Random parameters of the run's shapes: a real initialisation takes ~20 s on a small CPU.
    like = jax.eval_shape(lambda: setup.init_run(config)[2])
    rng = np.random.default_rng(0)
    state = jax.tree.map(
        lambda s: (
            rng.normal(0, 0.3, s.shape) if s.dtype.kind == "f" else np.zeros(s.shape)
        ).astype(s.dtype),
        like,
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1)
    ckpt.save(STEP, state)
    ckpt.wait()
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"config": json.loads(config.to_json_best_effort())}, f)
    return state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, state) of a tiny cnn_lstm run with initialised parameters."""
    workdir = tmp_path_factory.mktemp("run")
    config = _pixel_config()
    return str(workdir), config, _save_run(str(workdir), config)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A CSV of 5 videos: 3 synthetic 2-second ones with a tone, one 3-second one without audio
    (in a sub-folder), and one whose labels are given by name."""
    root = tmp_path_factory.mktemp("videos")
    rows = synthetic_video.generate(
        root, num_videos=4, seconds=2.0, size=SIZE, fps=4.0, validate_fraction=0.0
    )
    silent = synthetic_video.render_frames(
        synthetic_video.sample_clip(np.random.default_rng(5), SIZE), num_frames=12, size=SIZE
    )
    os.makedirs(root / "more")
    synthetic_video.write_mp4(root / "more" / "silent.mp4", silent, fps=4.0)
    entries = [(r["path"], " ".join(map(str, r["labels"]))) for r in rows[:3]]
    entries += [("more/silent.mp4", "1 5"), (rows[3]["path"], "")]
    _write_csv(root / "videos.csv", entries)
    return root, entries


def _write_csv(path, entries):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(entries)


def _read(out, level, split="train"):
    """{id: decoded record} of every shard of a level, read back with vmjax's YT8M reader."""
    records = {}
    decode = yt8m.decode_frame_example if level == "frame" else yt8m.decode_video_example
    for name in sorted(os.listdir(os.path.join(out, level))):
        assert name.startswith(f"{split}-") and name.endswith(".tfrecord"), name
        path = os.path.join(out, level, name)
        for _, _, payload in tfrecord.read_records(path):
            record = decode(payload)
            records[record["id"]] = record
    return records


def _shard_bytes(out):
    return {
        f"{level}/{n}": open(os.path.join(out, level, n), "rb").read()
        for level in extract.LEVELS
        for n in sorted(os.listdir(os.path.join(out, level)))
    }


def _expected(path, state, config, pca):
    """The features of one video computed here: decode, the model's own apply, numpy PCA."""
    clip = video.decode_video(
        path, num_frames=300, sampling="fps", fps=1.0, size=(SIZE, SIZE), crop="center"
    )
    frames = clip["frames"][clip["mask"]]
    apply = _cnn_apply(json.dumps(config.model.cnn.to_dict()))
    embeddings = np.asarray(apply(state.params["cnn"], frames[None]))[0]
    mean, components, scale = (pca[f"rgb_{k}"] for k in ("mean", "components", "scale"))
    rgb = (embeddings - mean) @ components.T / scale
    t = len(frames)
    if not clip["has_audio"]:
        return rgb, np.zeros([t, 128]), embeddings, None
    wave = np.concatenate([clip["audio"], np.zeros(16_000 * t)])
    # Frame i's audio: the 96 log-mel frames (10 ms hop, 25 ms window) from second i.
    patches = np.stack(
        [video.log_mel(wave[16_000 * i : 16_000 * i + 95 * 160 + 400])[0] for i in range(t)]
    )
    patches = patches.reshape(t, -1)
    mean, components, scale = (pca[f"audio_{k}"] for k in ("mean", "components", "scale"))
    return rgb, (patches - mean) @ components.T / scale, embeddings, patches


@functools.cache
def _cnn_apply(fields):
    cnn = FrameResNet(**json.loads(fields))
    return jax.jit(lambda params, pixels: cnn.apply({"params": params}, pixels, train=False))


def _dequantized_reference(x):
    """The spec's formulas in float64: q = round((clip(x) + 2) * 255 / 4), x' = q * 4/255 + ..."""
    q = np.round((np.clip(x, -2, 2) + 2) * 255 / 4)
    return q * (4 / 255) + (4 / 512 - 2)


def test_records_match_an_independent_computation_and_resume(run, videos, tmp_path, capsys):
    workdir, config, state = run
    root, entries = videos
    out = str(tmp_path / "out")
    summary = extract.extract(str(root / "videos.csv"), out, workdir, shard_size=2, progress=False)
    assert summary["num_shards"] == 3 and summary["shards_written"] == 3
    assert summary["videos_written"] == 5 and summary["skipped"] == []
    assert summary["videos_cut"] == 0
    assert sorted(os.listdir(os.path.join(out, "frame"))) == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    log = capsys.readouterr().out
    assert "rgb components" in log and "are zero" in log  # the 64-d encoder's padding

    frames = _read(out, "frame")
    means = _read(out, "video")
    assert list(frames) == [path for path, _ in entries]  # ids: the CSV's paths, in order
    with np.load(os.path.join(out, "pca.npz")) as f:
        pca = dict(f)
    sample_rgb, sample_audio = [], []
    for path, labels in entries:
        record = frames[path]
        assert record["labels"].tolist() == [int(x) for x in labels.split()]
        rgb, audio, embeddings, patches = _expected(str(root / path), state, config, pca)
        seconds = 3 if "silent" in path else 2
        assert record["rgb"].shape == (seconds, 1024) and record["audio"].shape == (seconds, 128)
        assert record["rgb"].dtype == np.uint8
        for got, want in ((record["rgb"], rgb), (record["audio"], audio)):
            err = np.abs(yt8m.dequantize(got) - _dequantized_reference(want))
            assert err.max() <= STEP_Q + 1e-6, (path, err.max())
            # Exact except where float rounding lands on the other side of a level boundary.
            assert np.mean(err < 1e-6) > 0.99
        if patches is None:  # no audio track: features 0, quantized to 128
            assert np.all(record["audio"] == 128)
        else:
            sample_audio.append(patches)
        sample_rgb.append(embeddings)
        video_record = means[path]
        assert video_record["labels"].tolist() == record["labels"].tolist()
        np.testing.assert_allclose(
            video_record["mean_rgb"], yt8m.dequantize(record["rgb"]).mean(0), atol=1e-6
        )
        np.testing.assert_allclose(
            video_record["mean_audio"], yt8m.dequantize(record["audio"]).mean(0), atol=1e-6
        )

    # The saved PCA against the eigenvectors of the sample covariance (all 5 videos).
    for key, sample, dim in (("rgb", sample_rgb, 64), ("audio", sample_audio, 6144)):
        x = np.concatenate(sample).astype(np.float64)
        n = len(x)
        np.testing.assert_allclose(pca[f"{key}_mean"], x.mean(0), rtol=1e-4, atol=1e-4)
        gram = (x - x.mean(0)) @ (x - x.mean(0)).T / (n - 1)  # same nonzero spectrum as cov
        values, vectors = np.linalg.eigh(gram)
        values, vectors = values[::-1], vectors[:, ::-1]
        k = int(pca[f"{key}_num_fitted"])
        assert k == n - 1  # n centred frames span n - 1 directions
        assert pca[f"{key}_components"].shape[1] == dim
        np.testing.assert_allclose(pca[f"{key}_scale"][:k] ** 2 - 1e-4, values[:k], rtol=1e-3)
        directions = (x - x.mean(0)).T @ vectors[:, :k] / np.sqrt(values[:k] * (n - 1))
        cosines = np.abs(np.sum(directions * pca[f"{key}_components"][:k].T, axis=0))
        np.testing.assert_allclose(cosines, 1, atol=1e-3)
        assert not pca[f"{key}_components"][k:].any() and np.all(pca[f"{key}_scale"][k:] == 1)

    # Resume: a finished shard is kept, a missing one (and a half-written temp) is redone, in
    # decoding worker processes this time, to the same bytes.
    before = _shard_bytes(out)
    for level in extract.LEVELS:
        os.remove(os.path.join(out, level, "train-00001-of-00003.tfrecord"))
    stale = os.path.join(out, "frame", "train-00001-of-00003.tfrecord.tmp-999")
    open(stale, "wb").write(b"partial")
    summary = extract.extract(
        str(root / "videos.csv"), out, workdir, shard_size=2, workers=1, progress=False
    )
    assert (summary["shards_skipped"], summary["shards_written"]) == (2, 1)
    assert "2 already complete (skipped), 1 to write" in capsys.readouterr().out
    assert not os.path.exists(stale)
    assert _shard_bytes(out) == before
    summary = extract.extract(str(root / "videos.csv"), out, workdir, shard_size=2, progress=False)
    assert (summary["shards_skipped"], summary["shards_written"]) == (3, 0)


def test_unreadable_videos_raise_naming_the_file_or_are_skipped(run, videos, tmp_path):
    workdir, _, _ = run
    root, entries = videos
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    csv_path = tmp_path / "with_bad.csv"
    _write_csv(csv_path, [(str(root / entries[0][0]), "0"), (str(bad), "1")])
    with pytest.raises(video.VideoError, match="broken.mp4"):
        extract.extract(str(csv_path), str(tmp_path / "a"), workdir, progress=False)
    out = str(tmp_path / "b")
    summary = extract.extract(str(csv_path), out, workdir, on_error="skip", progress=False)
    assert summary["skipped"] == [str(bad)] and summary["videos_written"] == 1
    lines = open(os.path.join(out, "skipped.txt")).read().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{str(bad)}\t")
    # Outside the CSV's folder the id is the absolute path.
    assert list(_read(out, "frame")) == [str(root / entries[0][0])]
    # With the PCA saved, the bad file is met while shards are written: the finished shard
    # stays, the one being written leaves nothing behind.
    with pytest.raises(video.VideoError, match="broken.mp4"):
        extract.extract(str(csv_path), out, workdir, shard_size=1, progress=False)
    for level in extract.LEVELS:
        names = sorted(os.listdir(os.path.join(out, level)))
        assert names == ["train-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord"]


def test_videos_longer_than_max_frames_are_cut_and_counted(run, videos, tmp_path, capsys):
    workdir, _, _ = run
    root, entries = videos
    out = str(tmp_path / "out")
    summary = extract.extract(str(root / "videos.csv"), out, workdir, max_frames=1, progress=False)
    # Every video lasts 2 or 3 s: at 1 fps each keeps 1 frame and is reported as cut.
    assert summary["videos_cut"] == len(entries) == summary["videos_written"]
    assert all(r["rgb"].shape == (1, 1024) for r in _read(out, "frame").values())
    assert f"{len(entries)} video(s) longer than max_frames=1" in capsys.readouterr().out


def test_a_run_without_a_frame_encoder_is_a_clear_error(tmp_path, videos):
    root, _ = videos
    config = configs.get_config("yt8m:smoke")  # a mixture of experts on YT8M features
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"config": json.loads(config.to_json_best_effort())}, f)
    with pytest.raises(extract.ExtractError, match="'moe' reads YouTube-8M.*cnn_lstm"):
        extract.extract(str(root / "videos.csv"), str(tmp_path / "o"), str(tmp_path))


@pytest.fixture(scope="module", params=["vivit", "videomae"])
def clip_run(request, tmp_path_factory):
    """(architecture, transformers model, processor, workdir) of a tiny converted classifier
    with 4-frame clips (tests/tools/test_from_transformers_cli.py)."""
    from tests.tools.test_from_transformers_cli import base_config, save_tiny_classifier
    from vmjax.tools import from_transformers

    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model, processor = save_tiny_classifier(request.param, folder)
    workdir = str(tmp_path_factory.mktemp("clip_runs") / request.param)
    config = base_config(tmp_path_factory.getbasetemp() / "video_cache")
    from_transformers.convert_folder(str(folder), workdir, config, log=lambda _: None)
    return request.param, model, processor, workdir


def _reference_frame_features(architecture, model, processor, frames, clip_frames=4, pt=2):
    """transformers' final tokens: per clip (the last padded with the last frame), the mean of
    each time position's spatial tokens (VideoMAE: through fc_norm), for each of its frames."""
    import torch

    n = len(frames)
    clips = frames[np.minimum(np.arange(-(-n // clip_frames) * clip_frames), n - 1)]
    clips = clips.reshape(-1, clip_frames, *frames.shape[1:])
    values = processor([list(c) for c in clips], return_tensors="np")["pixel_values"]
    with torch.no_grad():
        if architecture == "vivit":
            tokens = model.vivit(pixel_values=torch.from_numpy(values)).last_hidden_state[:, 1:]
        else:
            tokens = model.videomae(pixel_values=torch.from_numpy(values)).last_hidden_state
        nt = clip_frames // pt
        per_time = tokens.reshape(len(clips), nt, -1, tokens.shape[-1]).mean(2)
        if architecture == "videomae":
            per_time = model.fc_norm(per_time)
    per_frame = np.repeat(per_time.numpy(), pt, axis=1)  # [clips, clip_frames, D]
    return per_frame.reshape(-1, per_frame.shape[-1])[:n]


def test_clip_encoder_features_are_per_clip(clip_run):
    """10 frames -> clips 0-3, 4-7, 8-9 (+ frame 9 twice): transformers' tokens, per frame."""
    architecture, model, processor, workdir = clip_run
    encoder = extract.load_encoder(workdir, batch_frames=8)  # 2 clips per call: 2 calls
    assert (encoder.clip_frames, encoder.dim, encoder.model_name) == (
        4,
        16,
        f"{architecture}_pixels",
    )
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    features = encoder(frames)
    assert features.shape == (10, 16)
    want = _reference_frame_features(architecture, model, processor, frames)
    np.testing.assert_allclose(features, want, atol=1e-4, rtol=0)
    # A tubelet's frames share their temporal token.
    np.testing.assert_array_equal(features[0], features[1])

    changed = frames.copy()
    changed[5] = 255 - changed[5]
    moved = np.abs(encoder(changed) - features).max(axis=1)
    assert np.all(moved[4:8] > 1e-3), moved  # frame 5's clip
    assert np.all(moved[:4] < 1e-6) and np.all(moved[8:] < 1e-6), moved


def test_extract_with_a_converted_clip_run(clip_run, videos, tmp_path):
    architecture, _, _, workdir = clip_run
    if architecture != "vivit":
        pytest.skip("one clip model suffices for the records")
    root, entries = videos
    out = str(tmp_path / "out")
    summary = extract.extract(str(root / "videos.csv"), out, workdir, progress=False)
    assert summary["videos_written"] == len(entries)
    records = _read(out, "frame")
    for path, _ in entries:
        seconds = 3 if "silent" in path else 2
        assert records[path]["rgb"].shape == (seconds, 1024)


def test_audio_patches_are_the_log_mel_of_each_second():
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, 16_000 * 2 + 5000).astype(np.float32)
    patches = extract.audio_patches(wave, 3, fps=1.0)
    assert patches.shape == (3, 96 * 64)
    np.testing.assert_allclose(patches[1], video.log_mel(wave[16_000:31_600])[0].ravel())
    # The third second runs past the end of the audio: silence (log of the 0.01 offset) there.
    tail = patches[2].reshape(96, 64)
    np.testing.assert_allclose(tail[-1], np.log(0.01), rtol=1e-6)


def test_cli_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "vmjax.extract", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "--videos" in result.stdout and "example" in result.stdout


def test_fit_pca_pads_missing_components_with_zeros():
    x = np.random.default_rng(1).normal(size=(40, 6)) * np.arange(1, 7)
    pca = extract.fit_pca(x, 10)
    assert pca.components.shape == (10, 6) and pca.num_fitted == 6
    out = pca(x)
    assert out.shape == (40, 10) and not out[:, 6:].any()
    # Whitened: unit variance (up to the 1e-4 epsilon) along each fitted component.
    np.testing.assert_allclose(out[:, :6].var(0, ddof=1), 1, rtol=1e-3)
