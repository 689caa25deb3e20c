"""Exported models: scores equal eval_step's, in a process without model code, at any batch size."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from tests.train.test_loop import NUM_CLASSES, _small
from vmjax import export as export_lib
from vmjax.data import pipeline
from vmjax.data.device import model_inputs
from vmjax.models import build_model
from vmjax.train import inputs, loop
from vmjax.train import state as state_lib
from vmjax.train.checkpoint import Checkpointer
from vmjax.train.step import eval_step

RUNS = {"logistic": ("smoke", {}), "frame_moe": ("frame,smoke", {"data.max_frames": 16})}


def _eval_scores(config, workdir, batch):
    """Scores of the run's last checkpoint by the in-process model (the reference)."""
    model = build_model(config.model, config.data.num_classes)
    tx = state_lib.make_optimizer(config.optimizer, config.num_train_steps)
    spec = pipeline.BatchSpec.from_config(config.data)
    like = state_lib.create_train_state(
        model, tx, model_inputs(pipeline.example_batch(spec)), jax.random.PRNGKey(config.seed)
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    state = ckpt.restore(ckpt.latest_step(), like)
    ckpt.close()
    step = jax.jit(functools.partial(eval_step, model=model, dtype=config.dtype))
    batch = {k: v for k, v in batch.items() if k != "ids"}  # strings stay on the host
    return np.asarray(step(state, batch)["scores"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (config, workdir, exported file, an eval batch of 16 videos)."""
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for name, (arg, overrides) in RUNS.items():
        config = _small(tmp, arg, **{"model.name": name, **overrides})
        workdir = str(tmp / name)
        loop.train_and_evaluate(config, workdir)
        _, eval_files, _ = inputs.resolve_data(config)
        spec = pipeline.BatchSpec.from_config(config.data)
        batch = next(iter(inputs.eval_stream(config, spec, eval_files, 16)))
        path = str(tmp / f"{name}.bin")
        export_lib.main(["--workdir", workdir, "--out", path])
        out[name] = (config, workdir, path, batch)
    return out


def test_scores_match_eval_step_in_a_process_without_model_code(runs, tmp_path):
    batches, expected = {}, {}
    for name, (config, workdir, _, batch) in runs.items():
        for n in (16, 5):  # two batch sizes through one export
            part = {k: v[:n] for k, v in batch.items()}
            batches[f"{name}_{n}"] = part
            expected[f"{name}_{n}"] = _eval_scores(config, workdir, part)
            np.savez(tmp_path / f"{name}_{n}.npz", **part)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from vmjax.export import load
        names, tmp, paths = sys.argv[1].split(","), sys.argv[2], json.loads(sys.argv[3])
        for key in names:
            predict = load(paths[key.rsplit("_", 1)[0]])
            batch = dict(np.load(f"{tmp}/{key}.npz"))
            np.save(f"{tmp}/{key}_scores.npy", predict(batch))
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(("vmjax", "flax")))))
        """
    )
    paths = {name: path for name, (_, _, path, _) in runs.items()}
    done = subprocess.run(
        [sys.executable, "-c", script, ",".join(batches), str(tmp_path), json.dumps(paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "vmjax.models" not in modules and "vmjax.train" not in modules
    assert not [m for m in modules if m.startswith("flax")]
    for key, want in expected.items():
        got = np.load(tmp_path / f"{key}_scores.npy")
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=key)


def test_header_describes_the_run_and_its_inputs(runs):
    _, _, path, _ = runs["frame_moe"]
    header = export_lib.read_header(path)
    assert header["model"] == "frame_moe" and header["data_level"] == "frame"
    assert header["num_classes"] == NUM_CLASSES and header["step"] == 6
    assert header["platforms"] == ["cpu", "cuda", "tpu"]
    assert header["output"] == {"name": "scores", "shape": ["b", NUM_CLASSES], "dtype": "float32"}
    inputs = {i["name"]: (i["shape"], i["dtype"]) for i in header["inputs"]}
    assert inputs == {
        "rgb": (["b", 16, 1024], "uint8"),
        "audio": (["b", 16, 128], "uint8"),
        "mask": (["b", 16], "bool"),
    }
    video = export_lib.read_header(runs["logistic"][2])
    assert {i["name"]: i["shape"] for i in video["inputs"]} == {
        "rgb": ["b", 1024],
        "audio": ["b", 128],
    }  # the logistic model reads no text: those inputs are dropped


def test_wide_batches_read_transposed_kernels_and_score_the_same(runs):
    _, _, path, batch = runs["frame_moe"]
    header = export_lib.read_header(path)
    with np.load(path) as files:
        shapes = [files[f"param_{i}"].shape for i in range(header["num_variables"])]
    # frame_moe's only matrices are its Dense kernels (the MoE head's gates and experts).
    assert header["dense_kernels"] == [i for i, s in enumerate(shapes) if len(s) == 2]
    assert len(header["dense_kernels"]) >= 2
    plain, wide = export_lib.load(path), export_lib.load(path, wide_batches=True)
    assert (plain.wide_rows, wide.wide_rows) == (None, export_lib.WIDE_ROWS)
    for n in (1, export_lib.WIDE_ROWS, 16):  # below the threshold and on the transposed path
        part = {k: batch[k][:n] for k in ("rgb", "audio", "mask")}
        np.testing.assert_allclose(wide(part), plain(part), rtol=1e-5, atol=1e-7, err_msg=n)


def test_wrong_inputs_name_the_key(runs):
    _, _, path, batch = runs["frame_moe"]
    predict = export_lib.load(path)
    good = {k: batch[k][:3] for k in ("rgb", "audio", "mask")}
    assert predict(good).shape == (3, NUM_CLASSES)
    with pytest.raises(ValueError, match="'mask' is missing"):
        predict({k: good[k] for k in ("rgb", "audio")})
    with pytest.raises(ValueError, match=r"unexpected input key\(s\) \['rbg'\]"):
        predict({**good, "rbg": good["rgb"]})
    with pytest.raises(ValueError, match=r"'rgb' has shape \[3, 8, 1024\]; expected uint8 \[b, 16"):
        predict({**good, "rgb": good["rgb"][:, :8]})
    with pytest.raises(ValueError, match="'audio' has dtype float32; expected uint8"):
        predict({**good, "audio": good["audio"].astype(np.float32)})
    with pytest.raises(ValueError, match="'mask' has 2 rows; the other inputs have 3"):
        predict({**good, "mask": good["mask"][:2]})


def test_fixed_batch_size_export(runs, tmp_path):
    _, workdir, _, batch = runs["logistic"]
    path = str(tmp_path / "fixed.bin")
    export_lib.export(workdir, path, batch_size=4, log=lambda _: None)
    predict = export_lib.load(path)
    assert predict({k: batch[k][:4] for k in ("rgb", "audio")}).shape == (4, NUM_CLASSES)
    with pytest.raises(ValueError, match="exported for batch size 4"):
        predict({k: batch[k][:5] for k in ("rgb", "audio")})
    assert export_lib.load(path, wide_batches=True).wide_rows == export_lib.WIDE_ROWS
    # A batch size below WIDE_ROWS never takes the transposed path: no copies are made.
    small = str(tmp_path / "fixed2.bin")
    export_lib.export(workdir, small, batch_size=2, log=lambda _: None)
    assert export_lib.load(small, wide_batches=True).wide_rows is None


def test_clear_errors_for_bad_files_and_runs(runs, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        export_lib.load(str(tmp_path / "missing.bin"))
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a file written by vmjax.export"):
        export_lib.load(str(tmp_path / "junk.bin"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="'header is not a file in the archive'"):
        export_lib.load(str(tmp_path / "other.npz"))
    _, workdir, _, _ = runs["logistic"]
    with pytest.raises(ValueError, match=r"no checkpoint for step 4; it has steps \[3, 6\]"):
        export_lib.export(workdir, str(tmp_path / "m.bin"), step=4, log=lambda _: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((open(os.path.join(workdir, "config.json"))).read())
    with pytest.raises(SystemExit):
        export_lib.main(["--workdir", str(empty), "--out", str(tmp_path / "m.bin")])
    with pytest.raises(ValueError, match="has no checkpoints"):
        export_lib.export(str(empty), str(tmp_path / "m.bin"), log=lambda _: None)
    assert not os.path.exists(tmp_path / "m.bin")
    with pytest.raises(SystemExit) as e:
        export_lib.main(["--help"])
    assert e.value.code == 0
