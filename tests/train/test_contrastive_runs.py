"""The contrastive trainers' runs through the one owner: skipped NaN/Inf and diverged steps.

Tiny retrieval runs on a small embedded dataset. A loss spike (or a NaN) is planted in the
trainer's step at chosen steps; the run's checkpoints (one per step) show which updates were kept.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train.test_retrieval_training import get_config
from vmjax import commands
from vmjax import export as export_lib
from vmjax import run as run_lib
from vmjax.data import pipeline, synthetic, tfrecord
from vmjax.train import audiovisual, contrastive, guards, inputs, retrieval

SMALL = dict(seed=3, num_train=64, num_validate=32, min_frames=4, max_frames=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive_runs")
    config = _config(str(root / "cache"))
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    synthetic.generate(str(root / "cache" / spec.key()), spec, workers=1, log=lambda *_: None)
    return str(root / "cache")


def _config(cache_dir: str, **overrides):
    c = get_config(cache_dir)
    c.data.synthetic.update(SMALL)
    # get_config's shapes: the session's compilation cache holds its init and embedding steps
    c.num_train_steps = 6
    c.eval_every = 6
    c.checkpoint_every = 1  # every step's parameters, to see which updates were kept
    c.keep_checkpoints = 10
    c.log_every = 1
    c.optimizer.warmup_steps = 0
    for key, value in overrides.items():
        c[key] = value
    return c


PLANTED: dict[int, float] = {}  # step (1-based) -> what its reported loss is multiplied by


@pytest.fixture(scope="module")
def planted():
    """The retrieval step's reported loss times PLANTED[step], as if it spiked (or were NaN).

    The update itself is the ordinary one, so only the guard can keep the old parameters. The
    factor comes from the host at run time: one compiled step serves every planted run.
    """
    ordinary = retrieval.train_step

    def spiked(state, batch, rng, **kwargs):
        new, metrics = ordinary(state, batch, rng, **kwargs)
        factor = jax.pure_callback(
            lambda step: np.float32(PLANTED.get(int(step), 1.0)),
            jax.ShapeDtypeStruct((), jnp.float32),
            state.step + 1,
        )
        return new, {**metrics, "loss": metrics["loss"] * factor}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(retrieval, "train_step", spiked)
        patch.setattr(contrastive, "_SETUPS", {})  # build the steps anew, with the plant
        yield PLANTED


def _run(config, workdir: str, plant: dict[int, float]):
    PLANTED.clear()
    PLANTED.update(plant)
    try:
        return retrieval.train_and_evaluate(config, workdir)
    finally:
        PLANTED.clear()


def _state(workdir: str, step: int):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    state = ocp.StandardCheckpointer().restore(path)
    return state["params"], state["opt_state"]


def _same(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


def _skipping(cache: str):
    return _config(cache, on_divergence="skip", divergence_max_skips=2, on_nonfinite_loss="skip")


@pytest.fixture(scope="module")
def skipped(cache, planted, tmp_path_factory):
    """A 6-step run whose step 3 had a NaN loss and step 5 a spike: (config, workdir, log)."""
    workdir = str(tmp_path_factory.mktemp("skipped") / "w")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        # step 1's loss is ~ln 32 (a 32-pair batch): 1e4 times a later loss is far above 100 x it
        result = _run(_skipping(cache), workdir, {3: float("nan"), 5: 1e4})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert result["step"] == 6
    return _skipping(cache), workdir, "\n".join(records)


def test_nan_and_spiked_steps_are_skipped_and_their_parameters_are_unchanged(skipped):
    _, workdir, log = skipped
    assert "Skipped 1 update(s) with a NaN/Inf loss or gradient at steps [3]" in log
    assert "Skipped 1 update(s) whose train loss was above 100 x" in log
    assert "at steps [5] (1 in all)" in log
    states = {s: _state(workdir, s) for s in range(1, 7)}
    for skipped in (3, 5):  # neither the parameters nor the optimizer state moved
        assert _same(states[skipped - 1], states[skipped])
    for step in (2, 4, 6):  # every other step updates
        assert not _same(states[step - 1][0], states[step][0])


def test_consecutive_skipped_steps_stop_the_run_naming_the_step_and_last_good_checkpoint(
    cache, planted, tmp_path
):
    workdir = str(tmp_path / "w")
    with pytest.raises(FloatingPointError) as e:
        _run(_skipping(cache), workdir, {3: 1e4, 4: 1e4, 5: 1e4, 6: 1e4})
    message = str(e.value)
    assert "diverged at step 4: 2 consecutive steps (3..4)" in message
    assert "config.divergence_max_skips=2" in message
    assert f"last good checkpoint: step 3 in {workdir}/checkpoints" in message
    checkpoints = os.listdir(os.path.join(workdir, "checkpoints"))
    assert sorted(int(s) for s in checkpoints if s.isdigit()) == [1, 2, 3]
    assert _same(_state(workdir, 2), _state(workdir, 3))  # step 3 was skipped too


class _Ckpt:
    directory = "/runs/x/checkpoints"

    def wait(self):
        pass

    def latest_step(self):
        return 8


def test_the_nan_advice_suggests_skip_only_where_the_trainer_can_skip():
    def message(mode, can_skip):
        guard = guards.NonFiniteGuard(mode, _Ckpt(), can_skip)
        guard.add(9, np.bool_(False))
        with pytest.raises(FloatingPointError) as e:
            guard.check()
        return str(e.value)

    head = "train loss, gradient or parameter is NaN/Inf at step 9; last good checkpoint: step 8"
    assert message("stop", True) == (
        f"{head} in /runs/x/checkpoints. Lower config.optimizer.learning_rate, or set "
        "config.on_nonfinite_loss='skip' to skip updates with a NaN/Inf loss."
    )
    assert message("stop", False) == (
        f"{head} in /runs/x/checkpoints. Lower config.optimizer.learning_rate."
    )


def test_divergence_skip_passes_the_door_but_not_for_vmapped_seeds():
    from vmjax.configs import yt8m
    from vmjax.configs_check import validate
    from vmjax.errors import UserError
    from vmjax.train import seeds

    config = yt8m.get_config("smoke")
    config.on_divergence = "skip"
    validate(config)  # the classifier's step skips too (tests/train/test_step.py)
    with pytest.raises(UserError, match=r"on_divergence='skip': each seed"):
        seeds.check_vmappable(config)
    config.on_divergence = "sometimes"
    with pytest.raises(ValueError, match=r"on_divergence"):
        validate(config)


# --- `--mode eval` and vmjax.export on the run directory, through its owner.


def _last_eval(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])


def test_retrieval_eval_mode_gives_the_latest_checkpoints_recall(skipped, capsys):
    config, workdir, _ = skipped
    commands.lookup("retrieval", "eval", False)(commands.Args(config=config, workdir=workdir))
    printed = capsys.readouterr().out
    assert "Final retrieval evaluation (step 6, 32 validate videos)" in printed
    with open(os.path.join(workdir, "eval", "step_6.json")) as f:
        result = json.load(f)
    logged = _last_eval(workdir)  # what training evaluated at its last step
    assert logged["step"] == result["step"] == 6
    for key in retrieval.LOGGED:
        assert result[key] == pytest.approx(logged[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def retrieval_towers(skipped, tmp_path_factory) -> dict[str, str]:
    """The retrieval run's towers, each exported by the command line: {tower: file}."""
    _, workdir, _ = skipped
    out = tmp_path_factory.mktemp("retrieval_towers")
    paths = {tower: str(out / f"{tower}.npz") for tower in ("video", "text")}
    for tower, path in paths.items():
        export_lib.main(["--workdir", workdir, "--out", path, "--output", tower])
    return paths


def test_retrieval_towers_export_and_load_without_model_code(skipped, retrieval_towers):
    config, workdir, _ = skipped
    trained = retrieval.load_trained(workdir)
    embedded = retrieval.embed_split(
        trained.place.embed, trained.params, config, trained.data_dir, trained.tokenizer, "validate"
    )
    batch = next(iter(_validate_batches(config, trained)))
    real = batch["weights"] > 0
    for tower, inputs_ in (
        ("video", {"rgb", "audio", "mask"}),
        ("text", {"text_tokens", "text_mask"}),
    ):
        path = retrieval_towers[tower]
        header = export_lib.read_header(path)
        assert {i["name"] for i in header["inputs"]} == inputs_
        assert header["output"]["name"] == f"{tower}_embeddings" and header["step"] == 6
        embed = export_lib.load(path)
        got = embed(retrieval.model_batch(batch))[real]
        want = embedded.video if tower == "video" else embedded.text
        np.testing.assert_allclose(got, want[: len(got)], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def _validate_batches(config, trained):
    from vmjax.data import captions

    table = retrieval.caption_table(
        captions.caption_path(trained.data_dir, "validate"),
        trained.tokenizer,
        config.data.max_caption_tokens,
    )
    return captions.eval_batches(
        retrieval.split_files(trained.data_dir, "validate"),
        retrieval.batch_spec(config),
        batch_size=config.eval_batch_size,
        table=table,
    )


def test_an_unknown_tower_is_refused_naming_the_choices(skipped, tmp_path, capsys):
    _, workdir, _ = skipped
    with pytest.raises(SystemExit) as e:
        export_lib.main(["--workdir", workdir, "--out", str(tmp_path / "x.npz"), "--output", "rgb"])
    assert e.value.code == 2
    assert (
        "output='rgb': a retrieval run exports one of ('video', 'text')" in capsys.readouterr().err
    )


@pytest.fixture(scope="module")
def pretrained(cache, tmp_path_factory):
    """A 2-step audio-visual pretraining run on the same embedded data."""
    from tests.train.test_audiovisual import get_config as av_config

    config = av_config("", cache)
    config.data.synthetic.update(SMALL)
    config.num_train_steps = config.eval_every = config.checkpoint_every = 2
    workdir = str(tmp_path_factory.mktemp("av") / "w")
    audiovisual.train_and_evaluate(config, workdir)
    return config, workdir


@pytest.fixture(scope="module")
def av_towers(pretrained, tmp_path_factory) -> dict[str, str]:
    """The audio-visual run's rgb and audio towers, exported: {modality: file}."""
    _, workdir = pretrained
    out = tmp_path_factory.mktemp("av_towers")
    paths = {modality: str(out / f"{modality}.npz") for modality in ("rgb", "audio")}
    for modality, path in paths.items():
        export_lib.export(workdir, path, output=modality, log=lambda *_: None)
    return paths


def test_audiovisual_eval_mode_and_export_of_each_modality(pretrained, av_towers, capsys):
    config, workdir = pretrained
    commands.lookup("audiovisual", "eval", False)(commands.Args(config=config, workdir=workdir))
    assert "Final audio-visual evaluation (step 2, 32 eval videos)" in capsys.readouterr().out
    with open(os.path.join(workdir, "eval", "step_2.json")) as f:
        result = json.load(f)
    logged = _last_eval(workdir)
    for key in audiovisual.LOGGED:
        assert result[key] == pytest.approx(logged[key], rel=1e-5, abs=1e-6), key

    _, _, place_ = audiovisual.setup(config)
    _, eval_files, _ = inputs.resolve_data(config)
    params, _ = contrastive.restore_params(place_, run_lib.Run.open(workdir), None)
    embedded = audiovisual.embed_files(place_, params, config, eval_files)
    spec = pipeline.BatchSpec.from_config(config.data)
    batch = next(iter(inputs.eval_stream(config, spec, eval_files, config.eval_batch_size)))
    real = batch["weights"] > 0
    for modality in ("rgb", "audio"):
        embed = export_lib.load(av_towers[modality])
        assert {i["name"] for i in embed.header["inputs"]} == {modality, "mask"}
        got = embed({k: batch[k] for k in (modality, "mask")})[real]
        np.testing.assert_allclose(got, embedded[modality][: len(got)], rtol=1e-5, atol=1e-6)


# --- vmjax.serve on the video-side towers: each video's embedding, as the exported file's.

SERVED = 5  # videos per request: one bucket of the server's batch sizes (8), one compilation


def _request_body(files: list[str], tmp_path) -> bytes:
    """A TFRecord body of the first SERVED records of an ordered evaluation pass over files."""
    records = [payload for _, _, payload in tfrecord.read_records(files[0])][:SERVED]
    path = str(tmp_path / "body.tfrecord")
    tfrecord.write_records(path, records)
    with open(path, "rb") as f:
        return f.read()


def _json_videos(batch: dict, keys: tuple[str, ...]) -> list[dict]:
    """The first SERVED videos of a pipeline batch as JSON features: their frames, unpadded."""
    videos = []
    for i in range(SERVED):
        t = int(batch["mask"][i].sum())
        video = {k: batch[k][i, :t].tolist() for k in keys}
        if batch[keys[0]].dtype == np.uint8:
            video["quantized"] = True
        videos.append(video)
    videos[0]["id"], videos[2]["id"] = "first", "third"
    return videos


def _check_served(path: str, batch: dict, files: list[str], leave_out: str | None, tmp_path):
    """A server of the encoder file `path` answers each video's embedding for TFRecord and JSON
    bodies as export.load(path) does on the pipeline's batch of the same records, with ids."""
    from fastapi.testclient import TestClient

    from vmjax.serve import Service, create_app

    header = export_lib.read_header(path)
    want = export_lib.load(path)(batch)[:SERVED]  # the independent reference
    ids = [str(i) for i in batch["ids"][:SERVED]]
    service = Service(path, max_batch=8, max_wait_ms=0, warm_up=False)
    with TestClient(create_app(service)) as client:
        h = client.get("/healthz").json()
        assert h["output"] == header["output"]["name"] and h["num_classes"] is None
        assert h["embedding_dim"] == want.shape[1] == header["output"]["shape"][1]
        assert "vocabulary" not in h and "top_k" not in h

        tf = {"Content-Type": "application/x-tfrecord"}
        r = client.post("/predict", content=_request_body(files, tmp_path), headers=tf)
        assert r.status_code == 200, r.text
        answer = r.json()["embeddings"]
        assert [a["id"] for a in answer] == ids
        got = np.array([a["embedding"] for a in answer])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

        # JSON of only the features the tower reads (another one would be ignored)
        keys = tuple(k for k in ("rgb", "audio") if k != leave_out)
        videos = _json_videos(batch, keys)
        r = client.post("/predict", json=videos)
        assert r.status_code == 200, r.text
        answer = r.json()["embeddings"]
        assert [a.get("id") for a in answer] == ["first", None, "third", None, None]
        assert "id" not in answer[1]
        got = np.array([a["embedding"] for a in answer])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

        r = client.post("/predict", json=videos[0], params={"top_k": 3})
        assert r.status_code == 422
        assert "encoder" in r.json()["error"] and "embeddings" in r.json()["error"]
        missing = {k: v for k, v in videos[1].items() if k != keys[0]}
        r = client.post("/predict", json=missing)
        assert r.status_code == 422 and f"'{keys[0]}' is missing" in r.json()["error"]


def _data_dir(config) -> str:
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    return os.path.join(config.data.cache_dir, spec.key())


def test_the_server_answers_a_retrieval_video_towers_embeddings(
    skipped, retrieval_towers, tmp_path, capsys
):
    config, _, _ = skipped
    files = retrieval.split_files(_data_dir(config), "validate")
    spec = retrieval.batch_spec(config)
    batch = next(pipeline.eval_batches(files, spec, batch_size=config.eval_batch_size))
    _check_served(retrieval_towers["video"], batch, files, None, tmp_path)

    # A text tower takes captions' token ids, not videos: refused at start, in one line.
    from vmjax.serve import main

    with pytest.raises(SystemExit) as e:
        main(["--model", retrieval_towers["text"], "--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "text tower" in err and "--mode retrieve" in err and "Traceback" not in err


def test_the_server_answers_audiovisual_rgb_and_audio_towers_embeddings(
    pretrained, av_towers, tmp_path, capsys
):
    config, _ = pretrained
    _, files, _ = inputs.resolve_data(config)
    spec = pipeline.BatchSpec.from_config(config.data)
    batch = next(pipeline.eval_batches(files, spec, batch_size=config.eval_batch_size))
    _check_served(av_towers["rgb"], batch, files, "audio", tmp_path)
    # the audio tower's mask comes from the audio frames (the rgb, unread, is not kept)
    _check_served(av_towers["audio"], batch, files, "rgb", tmp_path)

    # An encoder has no classes: a vocabulary for it is a mistake at start.
    from vmjax.serve import main

    vocabulary = tmp_path / "vocabulary.csv"
    vocabulary.write_text("Index,Name\n0,cat\n")
    with pytest.raises(SystemExit) as e:
        main(["--model", av_towers["rgb"], "--vocabulary", str(vocabulary), "--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--vocabulary" in err and "encoder" in err and "Traceback" not in err


# --- several processes: the global batch's negatives, the same update as one process.


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


TASKS = ("retrieval", "audiovisual")


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory) -> str:
    """Every task trained by two processes (OUT/two/TASK.npz) and by this one (OUT/one/...).

    One process pair runs both tasks: the processes' start and join cost more than the steps.
    """
    import subprocess
    import sys

    from tests.train import contrastive_worker

    out = tmp_path_factory.mktemp("two_processes")
    for name in ("one", "two"):
        (out / name).mkdir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    port = str(_free_port())

    def start(process_id, num_processes, devices):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        flags = os.environ.get("XLA_FLAGS", "")  # the suite's own (tests/conftest.py) kept
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
        command = ["-m", "tests.train.contrastive_worker", ",".join(TASKS), str(process_id)]
        command.append(str(num_processes))
        return subprocess.Popen(
            [sys.executable, *command, port, str(out / "two")],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # Two processes of 2 devices each; the reference: this process alone, on all its devices.
    procs = [start(i, 2, 2) for i in range(2)]
    contrastive_worker.main(",".join(TASKS), 0, 1, port, str(out / "one"))
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    return str(out)


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_train_as_one_process_on_the_same_global_batch(two_and_one, task):
    one = np.load(os.path.join(two_and_one, "one", f"{task}.npz"))
    two = np.load(os.path.join(two_and_one, "two", f"{task}.npz"))
    assert list(one["rows"]) == list(range(8)) and list(two["rows"]) == [0, 1, 2, 3]
    # Each process fed half the rows; a loss over local pairs only would differ.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert set(one.files) == set(two.files)
    # Parameters after 3 Adam steps of lr 1e-2: summation order (2x2 devices, this process's
    # devices) moves them by ~1e-5; other negatives would move them by the step size. Attention
    # key biases are left out: softmax ignores them, so their gradient is rounding noise that
    # Adam scales up to a full step.
    for key in sorted(set(one.files) - {"rows"}):
        if "['key']['bias']" not in key:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-4, err_msg=key)
