"""Every kind of classifier run directory (pruned, distilled, PTQ, QAT) opens through the same
owner: it evaluates, exports and serves; PTQ runs have a checkpoint, quantized exports hold
int8 weights, and a distilled student's checkpoints do not carry its teacher."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.compress.test_distillation import _config
from vmjax import export, trained
from vmjax import run as run_lib
from vmjax.train import checkpoint, inference, inputs, loop


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pruned logistic teacher, its distilled student, its PTQ copy and a QAT run."""
    tmp = tmp_path_factory.mktemp("kinds")
    out = {"tmp": tmp}
    for name, preset, overrides in (
        (
            "teacher",
            "prune,smoke,logistic",
            {
                "compress.sparsity": 0.5,
                "compress.begin_step": 3,
                "compress.end_step": 3,
                "compress.update_every": 1,
            },
        ),
        ("student", "distill,smoke", {"compress.teacher_workdir": str(tmp / "teacher")}),
        ("ptq", "ptq,smoke", {"compress.source_workdir": str(tmp / "teacher")}),
        ("qat", "qat,smoke,logistic", {}),
    ):
        workdir = str(tmp / name)
        out[name] = (workdir, loop.train_and_evaluate(_config(preset, tmp, **overrides), workdir))
    return out


def _leaf_paths(step_dir) -> list[str]:
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state"))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    import jax

    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_a_distilled_students_checkpoints_do_not_carry_the_teacher(runs):
    workdir, result = runs["student"]
    step_dir = os.path.join(workdir, "checkpoints", str(result["step"]))
    paths = _leaf_paths(step_dir)
    assert any("params" in p for p in paths)
    assert not any("variables" in p for p in paths), paths  # Teacher.variables
    teacher_dir = runs["teacher"][0]
    teacher_bytes = _size(os.path.join(teacher_dir, "checkpoints", str(result["step"])))
    # Same-size student: its params + Adam's mu and nu, like the teacher's own checkpoint.
    assert _size(step_dir) < 1.2 * teacher_bytes
    # And it resumes: the teacher is put back from its own run directory.
    c = _config(
        "distill,smoke", runs["tmp"], num_train_steps=8, **{"compress.teacher_workdir": teacher_dir}
    )
    assert loop.train_and_evaluate(c, workdir)["step"] == 8


def _size(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(directory) for n in ns)


def test_a_ptq_run_has_a_checkpoint_and_evaluates_as_it_was_made(runs):
    workdir, result = runs["ptq"]
    steps = checkpoint.complete_steps(os.path.join(workdir, "checkpoints"))
    assert steps == [result["step"]]
    again = inference.evaluate_checkpoint(run_lib.Run.open(workdir).config, workdir)
    assert again["gap"] == pytest.approx(result["gap"], abs=1e-6)


@pytest.mark.parametrize("kind", ["ptq", "qat"])
def test_a_quantized_runs_export_holds_int8_weights_and_scores_like_its_evaluation(
    runs, tmp_path, kind
):
    workdir, _ = runs[kind]
    out = str(tmp_path / "model.npz")
    header = export.export(workdir, out, log=lambda _: None)
    assert header["weights"] == "int8"
    stored = np.load(out)
    params = [stored[k] for k in stored.files if k.startswith("param_")]
    int8 = [x for x in params if x.dtype == np.int8]
    assert int8 and max(x.size for x in int8) == max(x.size for x in params)  # the big kernel
    # The exported scores are the run's own evaluation's (int8 math on CPU both ways, or QAT's
    # fake quantization, which rounds the same way).
    config = run_lib.Run.open(workdir).config
    par, state, _ = inference.restore(config, workdir)
    spec = __import__("vmjax.data.pipeline", fromlist=["BatchSpec"]).BatchSpec.from_config(
        config.data
    )
    _, eval_files, _ = inputs.resolve_data(config)
    batch = next(iter(inputs.eval_stream(config, spec, eval_files, 8)))
    want = np.asarray(par.eval_step(state, par.put_batch(batch))["scores"])
    got = export.load(out)({k: batch[k] for k in header_inputs(header)})
    np.testing.assert_allclose(got, want, atol=2e-3)


def header_inputs(header: dict) -> list[str]:
    return [i["name"] for i in header["inputs"]]


def test_every_classifier_run_kind_loads_from_shapes(runs):
    for name in ("teacher", "student", "ptq", "qat"):  # pruned, distilled, PTQ, QAT
        workdir, result = runs[name]
        loaded = trained.load(workdir)
        assert loaded.step == result["step"] or name == "student"
        assert "head" in loaded.params
