"""Checkpoint analysis on a smoke run: loading, per-class AP, ablation, plots and the notebook."""

import json
import os
import pathlib

import matplotlib

matplotlib.use("Agg")  # the notebook kernel is a separate process; this one draws nothing

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tests.train.test_loop import _small  # noqa: E402
from vmjax import analysis, metrics  # noqa: E402
from vmjax.errors import RunDirectoryError
from vmjax.train import loop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    workdir = str(tmp / "w")
    loop.train_and_evaluate(_small(tmp, "frame,smoke"), workdir)
    return workdir


@pytest.fixture(scope="module")
def run(workdir):
    return analysis.Run.load(workdir)


@pytest.fixture(scope="module")
def batch(run):
    return run.validation_batch(32)


def test_load_gives_config_metrics_and_latest_step(workdir, run):
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert run.config.to_dict() == saved["config"]
    assert run.config.model.name == "frame_moe" and run.config.data.level == "frame"
    assert run.step == 6 and int(run.state.step) == 6
    assert [m["step"] for m in run.metrics] == [3, 6]
    steps, gap = run.history("gap")
    assert steps.tolist() == [3, 6] and gap[-1] == run.metrics[-1]["gap"]
    assert run.data_dir == saved["resolved"]["embedded_data_dir"]
    assert len(run.class_names) == run.config.data.num_classes
    assert set(run.kinds) == {"visual", "audio", "cross_modal", "temporal", "text"}
    assert 0.5 < run.oracle["gap"] < 1
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]  # untouched


def test_load_restores_an_earlier_step_and_names_missing_ones(workdir, run):
    earlier = analysis.Run.load(workdir, step=3)
    assert earlier.step == 3 and int(earlier.state.step) == 3
    a, b = earlier.state.params["head"], run.state.params["head"]
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))
    with pytest.raises(RunDirectoryError, match=r"step 4.*\[3, 6\]"):
        analysis.Run.load(workdir, step=4)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_validation_batch_and_scores_match_the_logged_evaluation(run):
    whole = run.validation_batch(64)  # more than the 40 videos: padding rows are dropped
    assert len(whole["labels"]) == 40 and (whole["weights"] == 1).all()
    scores = run.scores(whole)
    assert scores.shape == (40, run.config.data.num_classes)
    assert ((scores > 0) & (scores < 1)).all()
    # The last logged GAP was computed on the same 40 videos by the training loop.
    assert metrics.gap(scores, whole["labels"]) == pytest.approx(run.metrics[-1]["gap"], abs=1e-5)


def test_per_class_ap_matches_hand_computed_values_and_the_metrics_map():
    scores = np.array(
        [
            [0.9, 0.1, 0.5],
            [0.8, 0.7, 0.2],
            [0.3, 0.6, 0.4],
            [0.2, 0.05, 0.95],
        ]
    )
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0]])
    # k=3 keeps everything. Class 0 ranks videos 0,1,2,3: hits at ranks 1 and 3 -> (1 + 2/3) / 2.
    # Class 1 ranks 1,2,0,3: hit at rank 1 -> 1. Class 2 ranks 3,0,2,1: hits at 3, 4 ->
    # (1/3 + 2/4) / 2.
    expected = np.array([(1 + 2 / 3) / 2, 1.0, (1 / 3 + 2 / 4) / 2])
    np.testing.assert_allclose(analysis.per_class_ap(scores, labels, k=3), expected)
    # k=1 keeps each video's top class only (0, 0, 1, 2): class 0 keeps videos 0 and 1 (hit,
    # miss) of its 2 positives -> 1/2; classes 1 and 2 keep only negatives -> 0.
    np.testing.assert_allclose(analysis.per_class_ap(scores, labels, k=1), [0.5, 0.0, 0.0])
    # A class with no positives has no AP.
    assert np.isnan(analysis.per_class_ap(scores, np.zeros_like(labels), k=3)).all()
    rng = np.random.default_rng(0)
    scores, labels = rng.random((50, 30)), rng.random((50, 30)) < 0.1
    for k in (3, 20):
        ap = analysis.per_class_ap(scores, labels, k=k)
        assert np.nanmean(ap) == pytest.approx(metrics.mean_ap(scores, labels, k=k), abs=1e-9)


def test_modality_ablation_changes_scores_and_gap(run, batch):
    from vmjax.data.device import model_inputs

    inputs = model_inputs(batch)
    none = analysis.ablated_inputs(inputs, analysis.MODALITIES)
    assert float(np.abs(np.asarray(inputs["rgb"])).sum()) > 0  # the caller's inputs are kept
    assert not np.asarray(none["rgb"]).any() and not np.asarray(none["text_mask"]).any()
    assert not np.allclose(run.predict(none), run.predict(inputs))
    result = analysis.modality_ablation(run, batch)
    assert list(result) == list(analysis.ABLATIONS)
    assert result["all inputs"] == pytest.approx(metrics.gap(run.scores(batch), batch["labels"]))
    assert result["all zeroed"] != result["all inputs"]
    assert result["rgb zeroed"] != result["all inputs"]
    with pytest.raises(ValueError, match="video"):
        analysis.ablated_inputs(inputs, ("video",))


def test_plots_return_figures_with_expected_axes_and_lines(run, batch):
    fig = analysis.plot_training_curves(run)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 3  # GAP, mAP, oracle GAP
    assert fig.axes[0].lines[2].get_linestyle() == "--"
    assert len(fig.axes[1].lines) == 1

    fig = analysis.plot_ap_vs_frequency(run, batch)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"
    assert 1 <= len(fig.axes[0].collections) <= 5  # one scatter per kind present

    fig = analysis.plot_gap_by_kind(run)
    assert len(fig.axes) == 1 and len(fig.axes[0].containers) == 2  # model and oracle bars
    assert len(fig.axes[0].patches) == 2 * 5

    fig = analysis.plot_modality_ablation(analysis.modality_ablation(run, batch))
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == len(analysis.ABLATIONS)

    fig = analysis.plot_weights_over_time(run, batch, video=1)
    assert len(fig.axes) == 2 and [len(ax.lines) for ax in fig.axes] == [2, 2]
    frames = int(batch["num_frames"][1])
    assert len(fig.axes[1].lines[0].get_xdata()) == frames
    assert "saliency" in fig._suptitle.get_text()


def test_frame_saliency_is_gradient_times_input(run, batch):
    s = analysis.frame_saliency(run, batch, video=0)
    frames = int(batch["num_frames"][0])
    assert s["rgb_norm"].shape == s["audio_saliency"].shape == (frames,)
    assert np.isfinite(s["rgb_saliency"]).all() and np.abs(s["rgb_saliency"]).sum() > 0
    assert s["top_class"] == int(np.argmax(run.scores(batch)[0]))


def test_notebook_executes_top_to_bottom(workdir, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / "checkpoint_analysis.ipynb", as_version=4)
    monkeypatch.setenv("VMJAX_WORKDIR", workdir)  # the kernel inherits the environment
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # every plot was drawn


def _colab_cell():
    """The notebook's first code cell, run outside Colab: its install and upload helpers."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / "checkpoint_analysis.ipynb", as_version=4)
    namespace = {}
    exec(next(c.source for c in nb.cells if c.cell_type == "code"), namespace)
    return namespace


def test_notebook_colab_cell_installs_from_the_repo_url_or_an_uploaded_wheel(monkeypatch, tmp_path):
    cell = _colab_cell()
    calls = []
    monkeypatch.setattr(cell["subprocess"], "check_call", calls.append)
    assert cell["install_in_colab"]("https://example.org/me/vmjax", None) == (
        "git+https://example.org/me/vmjax"
    )
    assert cell["install_in_colab"]("", lambda: {"vmjax-0.1.0-py3-none-any.whl": b""}) == (
        "vmjax-0.1.0-py3-none-any.whl"
    )
    assert [c[-1] for c in calls] == [
        "git+https://example.org/me/vmjax",
        "vmjax-0.1.0-py3-none-any.whl",
    ]
    assert all(c[1:5] == ["-m", "pip", "install", "-q"] for c in calls)
    with pytest.raises(SystemExit, match="expected one .whl file, got none"):
        cell["install_in_colab"]("", lambda: {"notes.txt": b""})


def test_notebook_colab_cell_unpacks_an_uploaded_run_zip(monkeypatch, tmp_path):
    import zipfile

    cell = _colab_cell()
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile("run.zip", "w") as z:  # `zip -r run.zip w` of a run directory `w`
        z.writestr("w/config.json", "{}")
        z.writestr("w/checkpoints/5/state/x", "")
    workdir = cell["unpack_run"](lambda: {"run.zip": b""}, root=str(tmp_path / "runs"))
    assert workdir == str(tmp_path / "runs" / "w")
    with zipfile.ZipFile("empty.zip", "w") as z:
        z.writestr("w/metrics.jsonl", "")
    with pytest.raises(SystemExit, match="empty.zip holds no config.json"):
        cell["unpack_run"](lambda: {"empty.zip": b""}, root=str(tmp_path / "runs2"))
