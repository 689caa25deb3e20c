"""The comparative study: every zoo model and fusion method on the embedded data -> docs/results.md.

  python benchmarks/zoo.py --quick     # every row at a small budget -> docs/results_quick.md
  python benchmarks/zoo.py             # the full study, 3 seeds per row -> docs/results.md
  python benchmarks/zoo.py --lr_sweep  # first: each model row's learning rate (results_lr.json)
  python benchmarks/zoo.py --steps 1200 --rows "lstm,vivit" --out /tmp/long/results.md
  python benchmarks/zoo.py --rows "multimodal gated,multimodal gated - audio" --update
  python benchmarks/zoo.py --sweep "--launcher slurm --slurm_option=--gpus-per-task=1"
  python benchmarks/zoo.py --from_json docs/results.json   # re-render table, findings, plot

Every model row runs its seeds as one `python -m vmjax.sweep` (a directory per row under
--workdir): finished seeds are skipped, so the study can be stopped and resumed, grown by seeds
or rows, or sent to a SLURM cluster with --sweep (rows still queued are left out of the table;
run the same command again once they finish). Each row's cells are mean ± std over its seeds,
with the per-seed values in the JSON, and its learning curve (GAP at CURVE_POINTS evaluations).
Each model trains from its `configs/yt8m.py:<name>` preset shrunk to CPU size (the overrides
are in each row's command), all with the same budget (steps x batch) on the same embedded data,
and is evaluated on its 4,000 validation videos. The multimodal model runs with each fusion
method, and again with each modality (rgb, audio, text) removed. Classic scikit-learn models on
video-level features (vmjax.baselines) are reference rows. The embedded data's class kinds say
what a model must see: temporal classes need frame order, cross-modal ones rgb and audio
together, text ones the text tokens; the oracle and its blind variants bound each column.
Writes the table, findings computed from it, every row's command, the rows as JSON and a PNG.
"""

import argparse
import json
import os
import pathlib
import shlex
import shutil
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmjax.data import synthetic  # noqa: E402
from vmjax.models.classifiers import FUSIONS, MODALITIES  # noqa: E402
from vmjax.tools import configs  # noqa: E402

BUDGETS = {  # name -> overrides every row gets: the same steps, batch and warmup
    "full": {"num_train_steps": 400, "batch_size": 64, "optimizer.warmup_steps": 50},
    # A smaller embedded dataset (its own cache entry and oracle) keeps evaluation short.
    "quick": {
        "num_train_steps": 60,
        "batch_size": 32,
        "optimizer.warmup_steps": 10,
        "data.synthetic.num_train": 4000,
        "data.synthetic.num_validate": 1000,
    },
}
# Train videos the scikit-learn rows fit on: their fit time and the forest's memory (~1 GB per
# 1,000 videos here) grow with it, so they see fewer videos than the SGD-trained rows.
BASELINE_TRAIN = {"full": 4000, "quick": 500}
# CPU-sized overrides per model (the presets keep the papers' / starter's sizes). The embedded
# videos have 8-48 frames, so max_frames=48 drops nothing.
CPU = {
    "common": {
        "eval_batch_size": 256,
        "data.max_frames": 48,
        "optimizer.learning_rate": 0.003,
    },
    "logistic": {"optimizer.learning_rate": 0.01},
    "moe": {"optimizer.learning_rate": 0.01},
    "frame_logistic": {"optimizer.learning_rate": 0.01},
    "frame_moe": {"optimizer.learning_rate": 0.01},
    "dbof": {"model.cluster_size": 512, "model.hidden_size": 256},
    # The LSTM learns far slower at 0.003 (audio-only LSTM: GAP 0.13 at 0.003, 0.30 at 0.01 after
    # 600 steps); ViViT does worse at 0.01 (0.75 -> 0.57), so it keeps 0.003.
    "lstm": {"model.hidden_size": 256, "model.num_layers": 1, "optimizer.learning_rate": 0.01},
    "netvlad": {"model.num_clusters": 16, "model.audio_clusters": 8, "model.hidden_size": 256},
    "nextvlad": {"model.num_clusters": 16, "model.audio_clusters": 8, "model.hidden_size": 256},
    # ViViT's temporal GAP after 600 steps: 2 layers with ViT's N(0, 0.02) positions 0.465,
    # with sinusoidal positions 0.530 (mean pooling instead of CLS 0.460); 3 layers 0.738.
    "vivit": {
        "model.vivit.hidden_size": 128,
        "model.vivit.num_layers": 3,
        "model.vivit.mlp_dim": 256,
    },
    # MBT: a bottleneck written by layer l is first read by layer l + 1, so with 2 fusion layers
    # only fusion_layer 0 exchanges anything between modalities (the preset's 1, made for 3
    # layers, left the study's bottleneck rows with no exchange at all before 2026-12-07).
    "multimodal": {
        "model.hidden_size": 128,
        "model.vivit.hidden_size": 128,
        "model.vivit.num_layers": 3,
        "model.vivit.mlp_dim": 256,
        "model.fusion_layers": 2,
        "model.fusion_layer": 0,
    },
}
# --quick also shrinks the transformer models (the slowest rows) further.
QUICK_SIZES = {
    "vivit": {
        "model.vivit.hidden_size": 64,
        "model.vivit.num_layers": 2,
        "model.vivit.mlp_dim": 128,
    },
    "multimodal": {
        "model.hidden_size": 64,
        "model.vivit.hidden_size": 64,
        "model.vivit.num_layers": 2,
        "model.vivit.mlp_dim": 128,
        "model.fusion_layers": 2,  # one layer could not exchange through bottlenecks
    },
}
SINGLE = ("logistic", "moe", "frame_logistic", "frame_moe", "dbof", "lstm", "netvlad", "nextvlad")
SINGLE += ("vivit",)
BASELINES = ("logistic_regression", "random_forest")
# The third family, unsupervised fusion (configs/audiovisual.py): the multimodal rgb and audio
# encoders pretrained by audio-visual contrastive learning on the train videos without their
# labels (one run per budget, shared), then a logistic head on their concatenated embeddings:
# trained alone (a linear probe), trained with the encoders (fine-tune), and the same probe on
# randomly initialised encoders (the baseline the pretraining must beat).
UNSUPERVISED = {
    "unsupervised probe": "probe",
    "unsupervised fine-tune": "finetune",
    "random-encoder probe": "random_probe",
}
# A probe trains only a linear head: the logistic rows' learning rate (the fine-tune keeps the
# multimodal rows' 0.003).
PROBE = {"optimizer.learning_rate": 0.01}
# The pretraining's own settings on top of the multimodal CPU sizes and the budget's steps and
# batch (so it sees as many videos as a row trains on, without labels).
PRETRAIN = {
    "optimizer.learning_rate": 0.001,
    "pretrain.embed_dim": 128,
    "pretrain.within_modal": 1.0,
}
# Evaluations per run (the last at the final step): each row's learning curve.
CURVE_POINTS = 4
ORDER_AWARE = ("lstm", "vivit")  # single-encoder models that see frame order
RGB_KINDS = ("visual", "cross_modal", "temporal")  # class kinds whose evidence is in rgb


def _rows() -> dict[str, tuple[str, dict]]:
    """Row label -> (preset or 'sklearn', overrides)."""
    rows = {name: (name, {}) for name in SINGLE}
    for fusion in FUSIONS:
        rows[f"multimodal {fusion}"] = ("multimodal", {"model.fusion": fusion})
        for dropped in MODALITIES:
            kept = ",".join(m for m in MODALITIES if m != dropped)
            rows[f"multimodal {fusion} - {dropped}"] = (
                "multimodal",
                {"model.fusion": fusion, "model.modalities": kept},
            )
    for label, stage in UNSUPERVISED.items():
        rows[label] = ("audiovisual", {"stage": stage})
    for name in BASELINES:
        rows[f"sklearn {name}"] = ("sklearn", {"model": name})
    return rows


ROWS = _rows()


def get_config(preset: str, file: str = "yt8m.py"):
    return configs.get_config(ROOT / "configs" / file, preset)


apply = configs.apply_overrides


def row_overrides(label: str, budget: str, steps: int, lr: float | None = None) -> dict:
    """A model row's config overrides: CPU sizes, the budget, evaluation CURVE_POINTS times."""
    preset, extra = ROWS[label]
    overrides = {
        **CPU["common"],
        **CPU.get(preset, {}),
        **(QUICK_SIZES.get(preset, {}) if budget == "quick" else {}),
        **extra,
        **BUDGETS[budget],
        "num_train_steps": steps,
        "eval_every": max(steps // CURVE_POINTS, 1),
        "checkpoint_every": steps,
    }
    if lr is not None:
        overrides["optimizer.learning_rate"] = lr
    return overrides


def sweep_command(preset: str, overrides: dict, out: str, seeds: int, grid: str = "") -> list[str]:
    """The `python -m vmjax.sweep` arguments that train a row's seeds (or an LR grid)."""
    args = ["--config", f"{ROOT / 'configs' / 'yt8m.py'}:{preset}", "--out", out]
    args += ["--seeds", str(seeds), *(["--grid", grid] if grid else [])]
    return args + [f"--set={k}={v}" for k, v in overrides.items()]


def run_sweep(argv: list[str], extra: list[str]) -> dict | None:
    """Runs (or resumes, or only gathers) one sweep; its results, or None before any run ends."""
    from vmjax.sweep import cli as sweep_cli
    from vmjax.sweep import gather
    from vmjax.sweep.grid import SweepError

    code = sweep_cli.main([*argv, *extra])
    out = argv[argv.index("--out") + 1]
    if code == 2:
        raise SystemExit(f"zoo: the sweep in {out} refused its arguments (above)")
    try:
        return gather.gather(out)
    except SweepError:  # no run recorded yet (a queued SLURM array)
        return None


def run_row(
    label: str, budget: str, workdir: str, seeds: int, steps: int, lr, sweep_args: list[str]
) -> dict | None:
    """Trains and evaluates one row's seeds; its metrics (mean, std, per seed), size, speed,
    learning curve and command, or None while some of its seeds are unfinished."""
    preset, extra = ROWS[label]
    if preset == "sklearn":
        return _run_baseline(label, extra["model"], budget)
    if preset == "audiovisual":
        return _run_unsupervised(label, extra["stage"], budget, workdir, seeds, steps)
    from vmjax.tools.summary import summarize

    overrides = row_overrides(label, budget, steps, lr)
    out = os.path.join(workdir, f"{budget}-{steps}", label.replace(" ", "_"))
    results = run_sweep(sweep_command(preset, overrides, out, seeds), sweep_args)
    cell = results["cells"][0] if results else None
    if cell is None or cell["num_done"] < seeds:
        done = cell["num_done"] if cell else 0
        print(f"zoo: {label}: {done} of {seeds} seeds finished ({out})", file=sys.stderr)
        return None
    config = get_config(preset)
    apply(config, overrides)
    run_dirs = [os.path.join(out, "runs", f"seed={s}") for s in cell["seeds"]]
    # The markers' times are whole seconds: a run of under a second counts one.
    seconds = max(statistics.fmean(_run_seconds(d) for d in run_dirs), 1.0)
    batch_size = BUDGETS[budget]["batch_size"]
    args = " ".join(f"--set={k}={v}" for k, v in overrides.items())
    return {
        "label": label,
        "params": summarize(config)["params"],
        "seconds": round(seconds, 1),
        "examples_per_s": round(steps * batch_size / seconds, 1),
        "train_videos": steps * batch_size,
        "command": f"python -m vmjax.sweep --config configs/yt8m.py:{preset} --out W "
        f"--seeds {seeds} {args}",
        **seeded_metrics(cell),
        "curve": curve([_evals(d) for d in run_dirs]),
    }


def seeded_metrics(cell: dict) -> dict:
    """A sweep cell's metrics as a row's: the mean over seeds under the metric's own name, then
    <metric>_std (sample, n - 1; None for one seed) and <metric>_per_seed in seed order."""
    row = {"seeds": [int(s) for s in cell["seeds"]]}
    for key, mean in cell["mean"].items():
        if key.startswith(("gap", "map", "hit", "oracle")):
            row[key] = mean
            if not key.startswith("oracle"):
                row[f"{key}_std"] = cell["std"][key]
                row[f"{key}_per_seed"] = [m[key] for m in cell["seeds"].values()]
    return row


def curve(evals: list[list[dict]]) -> dict:
    """Mean and std over seeds of every evaluation step's GAP (and GAP per kind)."""
    steps = sorted(set.intersection(*(set(e["step"] for e in seed) for seed in evals)))
    out = {"step": steps}
    keys = ["gap"] + [f"gap_{k}" for k in synthetic.KINDS]
    for key in keys:
        if not all(key in e for seed in evals for e in seed):
            continue  # no class kinds: data other than the embedded dataset
        values = [[next(e[key] for e in seed if e["step"] == s) for seed in evals] for s in steps]
        out[key] = [statistics.fmean(v) for v in values]
        out[f"{key}_std"] = [statistics.stdev(v) if len(v) > 1 else None for v in values]
    return out


def _evals(run_dir: str) -> list[dict]:
    """metrics.jsonl's evaluation lines, the last one per step (a resumed run may repeat)."""
    by_step = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                metrics = json.loads(line)
                if "gap" in metrics:
                    by_step[metrics["step"]] = metrics
    return [by_step[s] for s in sorted(by_step)]


def _run_seconds(run_dir: str) -> float:
    """Wall time of a sweep run's last attempt (its DONE marker's start and end)."""
    done = json.loads(pathlib.Path(run_dir, "DONE").read_text())
    fmt = "%Y-%m-%dT%H:%M:%S"
    start, end = (time.mktime(time.strptime(done[k], fmt)) for k in ("started", "ended"))
    return end - start


def _multimodal_overrides(budget: str, steps: int) -> dict:
    """The multimodal rows' CPU sizes and the budget: the unsupervised rows' encoders match."""
    return {
        **CPU["common"],
        **CPU["multimodal"],
        **(QUICK_SIZES["multimodal"] if budget == "quick" else {}),
        **BUDGETS[budget],
        "num_train_steps": steps,
        "eval_every": steps,
        "checkpoint_every": steps,
    }


def _args(overrides: dict) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def _pretrain(budget: str, workdir: str, steps: int, seed: int) -> dict:
    """The audio-visual pretraining run of `budget` and seed, trained once and reused."""
    from vmjax.train import audiovisual

    overrides = {**_multimodal_overrides(budget, steps), **PRETRAIN, "seed": seed}
    run_dir = os.path.join(workdir, f"{budget}-{steps}", "audiovisual_pretrain", f"seed={seed}")
    done = pathlib.Path(run_dir) / "zoo_pretrain.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["overrides"] == overrides:
            return saved
    config = get_config("", "audiovisual.py")
    apply(config, overrides)
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.time()
    result = audiovisual.train_and_evaluate(config, run_dir)
    saved = {
        "overrides": overrides,
        "workdir": run_dir,
        "seconds": round(time.time() - start, 1),
        "audio_to_rgb_r@10": result["audio_to_rgb/r@10"],
        "rgb_to_audio_r@10": result["rgb_to_audio/r@10"],
        "num_videos": result["num_videos"],
        "command": f"python -m vmjax.main --config configs/audiovisual.py --workdir PRE "
        f"{_args({**overrides, 'seed': 'S'})}",
    }
    done.write_text(json.dumps(saved, indent=2))
    return saved


def _run_unsupervised(
    label: str, stage: str, budget: str, workdir: str, seeds: int, steps: int
) -> dict:
    """A head on the concatenated rgb and audio encoders: pretrained (probe, fine-tune) or not.
    Seed s pretrains (where the row has a pretraining) and trains the head with seed s."""
    from vmjax.tools.summary import summarize
    from vmjax.train import loop

    batch_size = BUDGETS[budget]["batch_size"]
    overrides = _multimodal_overrides(budget, steps)
    if stage != "finetune":
        overrides.update(PROBE)
    else:  # LP-FT within the budget: the head alone for half the steps, then everything
        overrides["freeze_steps"] = steps // 2
    per_seed, pres = [], []
    for seed in range(seeds):
        config = get_config(stage, "audiovisual.py")
        apply(config, {**overrides, "seed": seed})
        if stage != "random_probe":
            pres.append(_pretrain(budget, workdir, steps, seed))
            config.init_from.workdir = pres[-1]["workdir"]
        row_dir = os.path.join(workdir, f"{budget}-{steps}", label.replace(" ", "_"))
        row_dir = os.path.join(row_dir, f"seed={seed}")
        done = pathlib.Path(row_dir) / "zoo_row.json"
        if done.exists() and json.loads(done.read_text())["config"] == config.to_json():
            per_seed.append(json.loads(done.read_text()))
            continue
        shutil.rmtree(row_dir, ignore_errors=True)
        start = time.time()
        result = loop.train_and_evaluate(config, row_dir)
        metrics = {k: v for k, v in result.items() if k.startswith(("gap", "map", "hit", "oracle"))}
        saved = {"config": config.to_json(), "seconds": time.time() - start, "metrics": metrics}
        done.write_text(json.dumps(saved))
        per_seed.append(saved)
    cell = _cell([s["metrics"] for s in per_seed])
    seconds = statistics.fmean(s["seconds"] for s in per_seed)
    command = f"{pres[0]['command']} && " if pres else ""
    shown = {**overrides, "seed": "S", **({"init_from.workdir": "PRE"} if pres else {})}
    command += f"python -m vmjax.main --config configs/audiovisual.py:{stage} --workdir W "
    command += _args(shown)
    row = {
        "label": label,
        "params": summarize(config)["params"],
        "seconds": round(seconds, 1),
        "examples_per_s": round(steps * batch_size / seconds, 1),
        "train_videos": steps * batch_size,
        "command": command,
        **seeded_metrics(cell),
    }
    if pres:
        row["pretrain_seconds"] = statistics.fmean(p["seconds"] for p in pres)
        row["pretrain_audio_to_rgb_r@10"] = statistics.fmean(p["audio_to_rgb_r@10"] for p in pres)
        row["pretrain_chance_r@10"] = min(10 / pres[0]["num_videos"], 1.0)
    return row


def _cell(per_seed: list[dict]) -> dict:
    """Per-seed metrics in the shape of a sweep cell (vmjax.sweep.gather): mean, std, seeds."""
    from vmjax.sweep import gather

    mean, std = gather.summary(per_seed)
    return {"seeds": {str(i): m for i, m in enumerate(per_seed)}, "mean": mean, "std": std}


def _run_baseline(label: str, name: str, budget: str) -> dict:
    from vmjax import baselines
    from vmjax.train import inputs

    config = _data_config(budget)
    train_files, eval_files, data_dir = inputs.resolve_data(config)
    start = time.time()
    result = baselines.run_baseline(
        name,
        train_files,
        eval_files,
        "video",
        config.data.num_classes,
        max_train=BASELINE_TRAIN[budget],
        data_dir=data_dir,
        n_jobs=-1,  # every core, as the JAX rows use them
    )
    seconds = time.time() - start
    return {
        "label": label,
        "params": result["params"],
        "seconds": round(seconds, 1),
        "examples_per_s": round(BASELINE_TRAIN[budget] / result["fit_seconds"], 1),
        "num_train": result["num_train"],
        "command": (
            f"python -m vmjax.baselines --config configs/yt8m.py --models {name} "
            f"--max_train {BASELINE_TRAIN[budget]} --n_jobs -1"
            + "".join(f" --config.{k}={v}" for k, v in _data_overrides(budget).items())
        ),
        "oracle_gap": _oracle(budget)["gap"],
        **{k: v for k, v in result.items() if k.startswith(("gap", "map", "hit"))},
    }


def cell_text(row: dict, key: str) -> str:
    """'0.782 ± 0.003' (mean ± sample std over seeds), or '0.782' for a row of one seed."""
    std = row.get(f"{key}_std")
    return f"{row[key]:.3f}" if std is None else f"{row[key]:.3f} ± {std:.3f}"


def clear_win(a: dict, b: dict, key: str = "gap") -> bool | None:
    """Whether row a beats row b on `key` by more than twice the larger std over seeds, the
    study's rule for calling a difference a win; None when either row has no std (one seed)."""
    stds = (a.get(f"{key}_std"), b.get(f"{key}_std"))
    if None in stds:
        return None
    return a[key] - b[key] > 2 * max(stds)


def verdict(a: dict, b: dict, key: str = "gap") -> str:
    """The clause a comparison of a over b carries: a win, a loss, within noise, or untested."""
    win = clear_win(a, b, key)
    if win is None:
        return " (one seed: not tested against seed noise)"
    if win:
        return " (a win: more than twice the larger std over seeds)"
    if clear_win(b, a, key):
        return " (a loss: more than twice the larger std over seeds)"
    return " (not a win: within twice the larger std over seeds)"


def write_results(rows: list[dict], oracle: dict, path: str, study: dict) -> None:
    """The markdown table with findings and commands, the rows as JSON, and the PNGs."""
    budget, steps, seeds = study["budget"], study["steps"], study["seeds"]
    kinds = synthetic.KINDS
    batch_size = BUDGETS[budget]["batch_size"]
    num_validate = _data_config(budget).data.synthetic.num_validate
    # Each seed's pretraining is shared by the probe and the fine-tune: counted once.
    pretrain = max((r.get("pretrain_seconds", 0.0) for r in rows), default=0.0)
    minutes = sum(r["seconds"] * len(r.get("seeds", [0])) for r in rows) / 60
    minutes += pretrain * seeds / 60
    out = pathlib.Path(path)
    image = out.parent / "images" / f"{out.stem}.png"
    curves_image = out.parent / "images" / f"{out.stem}_curves.png"
    head = "| model | GAP | mAP | Hit@1 | GAP / oracle | " + " | ".join(kinds)
    missing = [label for label in ROWS if label not in {r["label"] for r in rows}]
    # scikit-learn rows are fitted once: reference rows, not seeded.
    short = [
        r["label"]
        for r in rows
        if len(r.get("seeds", [0])) < seeds and not r["label"].startswith("sklearn")
    ]
    quick = " --quick" if budget == "quick" else ""
    flags = f"{quick} --steps {steps} --seeds {seeds}"
    lrs = study.get("lr") or {}
    lines = [
        "# The comparative study: models and fusion methods on the embedded dataset",
        "",
        *(
            [
                f"> Partial: {len(rows)} of {len(ROWS)} rows. The rest: `python benchmarks/zoo.py"
                f'{flags} --update --rows "{",".join(missing)}"`.',
                "",
            ]
            if missing
            else []
        ),
        *(
            [
                f"> Seeds: {len(short)} of {len(rows)} rows have fewer than {seeds} seeds so far "
                f"({', '.join(short)}); their cells show the seeds they have (one: its value "
                f"alone). To complete them: `python benchmarks/zoo.py{flags} --update --rows "
                f'"{",".join(short)}"`.',
                "",
            ]
            if short
            else []
        ),
        f"Written by `python benchmarks/zoo.py{flags}`: {len(rows)} rows, "
        f"{minutes:.0f} min of run time in all on a 2-core CPU (every seed of every row, and "
        "the unsupervised rows' pretraining). "
        f"Every vmjax model trains {steps} steps of {batch_size} videos from its "
        "`configs/yt8m.py:<model>` preset at CPU size (each row's command is below) and is "
        f"evaluated on the {num_validate:,} validation videos of the embedded dataset"
        + _curve_text(rows)
        + "Each cell is the mean ± the "
        "sample standard deviation (n - 1) over the row's seeds (--config.seed; the seed "
        "sets the initialisation and the data order); a row trained with one seed shows its "
        "value alone. A difference is called a win only when it exceeds twice the larger std "
        "of the two rows. "
        + (
            "Learning rates: chosen per model row by `python benchmarks/zoo.py --lr_sweep` "
            "(one seed per value, the best final GAP; results_lr.json): "
            + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
            + "; other rows keep their preset's CPU learning rate. "
            if lrs
            else ""
        )
        + "GAP@20, mAP and Hit@1 are the official metrics; GAP / oracle divides by the "
        "generating oracle's GAP (label noise keeps it below 1); the kind columns are GAP@20 "
        "over each class kind (visual, audio, cross-modal, temporal, text). `multimodal F - M` "
        "is fusion F with modality M removed. The unsupervised rows are the third family, "
        "unsupervised fusion: a logistic head on the multimodal rgb and audio encoders after "
        "audio-visual contrastive pretraining on the train videos without their labels "
        "(configs/audiovisual.py, as many steps and videos as a row, one pretraining per "
        "seed; its command precedes the row's), trained alone (probe) or with the encoders "
        "(fine-tune); random-encoder probe is the same probe on untrained encoders. "
        f"scikit-learn rows fit {BASELINE_TRAIN[budget]:,} train videos' "
        "video-level features (mean rgb + mean audio) once; their params count fitted "
        "coefficients or tree nodes. train ex/s is wall-clock throughput of the whole row "
        "(evaluation included; for scikit-learn: train videos / fit seconds) on a shared VM, "
        "where the same row varies by about 30% between runs. Views: every row reads the "
        "embedded dataset's per-frame features, one view per video (the whole clip of up to "
        "max_frames frames); no row decodes pixels, so the pixel configs' multi-view "
        "evaluation (eval.num_clips x eval.num_crops, vivit_pixels and vivit_k400) is not "
        "used here.",
        "",
        f"![GAP against parameters, and per kind]({image.parent.name}/{image.name})",
        "",
        head + " | params | train ex/s |",
        "|" + "---|" * (len(kinds) + 7),
        "| oracle | "
        + f"{oracle['gap']:.3f} | | | 1.000 | "
        + " | ".join(f"{oracle[f'gap_{k}']:.3f}" for k in kinds)
        + " | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {cell_text(r, 'gap')} | {cell_text(r, 'map')} | "
            f"{cell_text(r, 'hit_at_1')} | {r['gap'] / oracle['gap']:.3f} | "
            + " | ".join(cell_text(r, f"gap_{k}") for k in kinds)
            + f" | {r['params']:,} | {_speed(r)} |"
        )
    summary = conclusions(rows, budget)
    if summary:
        lines += ["", "## Conclusions", "", summary]
    lines += ["", "## Findings (computed from the rows above)", ""] + findings(rows, oracle, budget)
    if any("curve" in r for r in rows):
        lines += ["", "## Learning curves", "", *budget_findings(rows)]
        lines += ["", f"![GAP during training]({curves_image.parent.name}/{curves_image.name})"]
    notes = out.with_name(f"{out.stem}_notes.md")
    if notes.exists():  # hand-written: the experiments that explain rows (not computed here)
        lines += ["", notes.read_text().strip()]
    lines += ["", "## Commands (W = any work directory, S = the seed)", ""]
    lines += [f"- {r['label']}: `{r['command']}`" for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({**study, "rows": rows}, indent=2))
    plot(rows, oracle, image)
    if any("curve" in r for r in rows):
        plot_curves(rows, oracle, curves_image, batch_size)


def _curve_text(rows: list[dict]) -> str:
    """How often the rows were evaluated: rows from before learning curves have one point."""
    with_curve = [r["label"] for r in rows if "curve" in r]
    if len(with_curve) == len(rows):
        return f", {CURVE_POINTS} times in the run (its learning curve). "
    if with_curve:
        return (
            f", once at the end; {', '.join(with_curve)} {CURVE_POINTS} times in the run "
            "(a learning curve). "
        )
    return ", once at the end. "


def _speed(row: dict) -> str:
    """train ex/s, or '—' for a row timed beside other jobs (its examples_per_s is null)."""
    return f"{row['examples_per_s']:,.0f}" if row.get("examples_per_s") else "—"


def budget_findings(rows: list[dict]) -> list[str]:
    """Which rows still gain over the last stretch of their learning curve (budget-limited) and
    which have levelled off, by the same rule as a win: more than twice the larger std."""
    rising, flat = [], []
    for r in rows:
        c = r.get("curve")
        if not c or len(c["step"]) < 2 or " - " in r["label"]:
            continue
        gain = c["gap"][-1] - c["gap"][-2]
        stds = (c["gap_std"][-1], c["gap_std"][-2])
        noise = 2 * max(stds) if None not in stds else 0.0
        text = f"{r['label']} {c['gap'][-2]:.3f} -> {c['gap'][-1]:.3f}"
        (rising if gain > max(noise, 0.005) else flat).append(text)
    steps = next(r["curve"]["step"] for r in rows if r.get("curve"))
    span = f"from step {steps[-2]} to {steps[-1]}" if len(steps) > 1 else ""
    out = [
        "- Every run's learning rate decays (cosine) to 1% of its peak by its last step, so any "
        "curve flattens near its end: a levelled-off row may still gain from a larger budget. "
        "Whether it does is read from the same row at two budgets (--steps), not from one curve."
    ]
    if rising:
        out.append(
            f"- Still rising {span} (GAP gain above twice the larger std and 0.005): "
            + ", ".join(rising)
            + ". These rows are budget-limited: a larger --steps would move them."
        )
    if flat:
        out.append(f"- Levelled off {span}: " + ", ".join(flat) + ".")
    return out


def plot_curves(rows: list[dict], oracle: dict, path: pathlib.Path, batch_size: int) -> None:
    """GAP and temporal-kind GAP against train videos seen, mean ± std over seeds, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    cmap = plt.get_cmap("tab20")
    shown = [r for r in rows if r.get("curve") and " - " not in r["label"]]
    for ax, key, title in zip(
        axes, ("gap", "gap_temporal"), ("GAP@20", "GAP@20, temporal kind"), strict=True
    ):
        for i, r in enumerate(shown):
            c = r["curve"]
            if key not in c:
                continue
            x = np.asarray(c["step"]) * batch_size
            y = np.asarray(c[key])
            ax.plot(x, y, marker="o", ms=3, color=cmap(i % 20), label=r["label"])
            std = c[f"{key}_std"]
            if None not in std:
                ax.fill_between(x, y - std, y + std, color=cmap(i % 20), alpha=0.15)
        ax.axhline(oracle[key], ls="--", c="k", lw=0.8, label="oracle")
        if key == "gap_temporal":
            ceiling = oracle["gap_temporal_order_blind"]
            ax.axhline(ceiling, ls=":", c="gray", lw=0.8, label="order-blind ceiling")
        ax.set(xlabel="train videos seen", ylabel=title, title=f"{title} during training")
    axes[1].legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def conclusions(rows: list[dict], budget: str) -> str:
    """The short paragraph under the table: which fusion wins where, by how much, and why.

    Every claim is chosen by the numbers (rankings, signs of differences), so a re-run with other
    results says what those show. Empty until every fusion row and its ablations are present.
    """
    by = {r["label"]: r for r in rows}
    fused = [f"multimodal {f}" for f in FUSIONS]
    ablations = [f"{m} - {d}" for m in fused for d in MODALITIES]
    if any(label not in by for label in fused + ablations):
        return ""

    def gap(label, kind=""):
        return by[label][f"gap_{kind}" if kind else "gap"]

    def name(label):
        return label.split()[1]

    ranked = sorted(fused, key=lambda m: -gap(m, "cross_modal"))
    top = ranked[0]
    spread = gap(top, "cross_modal") - gap(ranked[-1], "cross_modal")
    overall = max(fused, key=gap)
    singles = [m for m in SINGLE if m in by]
    if spread < 0.02:  # well inside run-to-run noise
        text = [
            "No fusion method separates from the others on the cross-modal classes, whose "
            f"label needs rgb and audio evidence together (all within {spread:.3f} GAP); the "
            f"best multimodal model overall is {name(overall)} (GAP {gap(overall):.3f})."
        ]
    else:
        margins = ", ".join(
            f"{name(m)} by {gap(top, 'cross_modal') - gap(m, 'cross_modal'):.3f}"
            for m in ranked[1:]
        )
        text = [
            f"On the cross-modal classes, whose label needs rgb and audio evidence together, "
            f"{name(top)} fusion leads ({gap(top, 'cross_modal'):.3f} GAP) ahead of {margins}"
            + verdict(by[top], by[ranked[1]], "gap_cross_modal")
            + (
                f", and it is also the best multimodal model overall (GAP {gap(overall):.3f})."
                if overall == top
                else f"; overall the best multimodal model is {name(overall)} "
                f"(GAP {gap(overall):.3f})."
            )
        ]
        rival = max(singles, key=lambda m: gap(m, "cross_modal"), default=None)
        if rival and gap(rival, "cross_modal") > gap(top, "cross_modal"):
            text.append(
                f"Still, the single-encoder {rival} scores {gap(rival, 'cross_modal'):.3f} on "
                f"them{verdict(by[rival], by[top], 'gap_cross_modal')}: a mixture of experts over "
                "mean rgb and audio features learns those conjunctions too."
            )
    # What each modality contributes: the drop in GAP when it is removed, averaged over fusions.
    cost = {d: sum(gap(m) - gap(f"{m} - {d}") for m in fused) / len(fused) for d in MODALITIES}
    order = sorted(MODALITIES, key=lambda d: -cost[d])
    # The share of classes whose evidence is in rgb: visual, cross-modal and temporal kinds.
    block = synthetic._KIND_BLOCK

    def share(kinds):
        return sum(block.count(synthetic.KINDS.index(k)) for k in kinds) / len(block)

    rgb_share = share(RGB_KINDS)
    text.append(
        f"Removing {order[0]} costs the most (GAP {cost[order[0]]:.3f} on average over the four "
        f"fusions), then {order[1]} ({cost[order[1]]:.3f}) and {order[2]} ({cost[order[2]]:.3f})"
        + (
            f": {rgb_share:.0%} of the classes (visual, cross-modal, temporal) need rgb."
            if order[0] == "rgb"
            else "."
        )
    )
    late = "multimodal late"
    if gap(late, "cross_modal") <= min(gap(late, "visual"), gap(late, "audio")):
        helped = gap(f"{late} - audio") > gap(late)
        text.append(
            "Late fusion averages per-modality logits, so one modality's features never "
            "condition the other's, and it does worst where both are needed: its cross-modal "
            f"GAP ({gap(late, 'cross_modal'):.3f}) is no better than its "
            f"weaker single-modality kind (audio {gap(late, 'audio'):.3f})"
            + (
                f", and removing audio even raises its GAP "
                f"({gap(late):.3f} -> {gap(late + ' - audio'):.3f})"
                f"{verdict(by[late + ' - audio'], by[late])}."
                if helped
                else "."
            )
        )
    bottleneck = "multimodal bottleneck"
    if gap(bottleneck) < gap(top) and spread >= 0.02:
        text.append(
            f"The MBT bottleneck, which lets modalities exchange information only through a few "
            f"shared tokens, trails {name(top)} by {gap(top) - gap(bottleneck):.3f} GAP at "
            f"this budget{verdict(by[top], by[bottleneck])}"
            + (
                f" and trains at {_speed(by[bottleneck])} ex/s against {name(top)}'s "
                f"{_speed(by[top])}."
                if by[bottleneck].get("examples_per_s") and by[top].get("examples_per_s")
                else "."
            )
        )
    if singles:
        best_single = max(singles, key=gap)
        if gap(best_single) > gap(overall):
            edge = gap(overall, "text") - gap(best_single, "text")
            text.append(
                f"No multimodal model beats the best single-encoder model ({best_single}, GAP "
                f"{gap(best_single):.3f}; best multimodal {name(overall)} {gap(overall):.3f}"
                f"{verdict(by[best_single], by[overall])}) overall: the visual and audio kinds, "
                f"{share(('visual', 'audio')):.0%} of the classes, need no more than its mean "
                "rgb and audio features"
                + (
                    f"; the multimodal models' edge is the text kind, whose tokens {best_single} "
                    f"does not see ({name(overall)} {gap(overall, 'text'):.3f} vs "
                    f"{gap(best_single, 'text'):.3f})."
                    if edge > 0.02
                    else "."
                )
            )
    unsupervised = unsupervised_summary(by)
    if unsupervised:
        text.append(unsupervised)
    if budget == "quick":
        text.append(
            "At this budget most multimodal rows are undertrained; the full table "
            "(`python benchmarks/zoo.py`) is the one to draw conclusions from."
        )
    return " ".join(text)


def unsupervised_summary(by: dict[str, dict]) -> str:
    """The third family in a few sentences: the probe against random encoders, the fine-tune
    against the same inputs trained from scratch ('' until the three rows are present)."""
    if any(label not in by for label in UNSUPERVISED):
        return ""
    probe, tuned, random = (by[label] for label in UNSUPERVISED)
    margin = probe["gap"] - random["gap"]
    text = (
        "Unsupervised fusion (the rgb and audio encoders pretrained by audio-visual contrastive "
        "learning without labels, a logistic head on their concatenated embeddings): the "
        f"linear probe reaches GAP {probe['gap']:.3f} against {random['gap']:.3f} for the same "
        "probe on randomly initialised encoders, "
        + (
            f"a margin of {margin:+.3f}{verdict(probe, random)}"
            + (
                f" (cross-modal {probe['gap_cross_modal']:.3f} vs {random['gap_cross_modal']:.3f})"
                if "gap_cross_modal" in probe
                else ""
            )
            + ": what the encoders learn from matching a video's rgb to its own audio, and each "
            "modality to another view of itself, carries over to the labels."
            if margin > 0.01
            else f"a difference of {margin:+.3f}: at this budget the pretraining did not "
            "produce features a linear head reads better than random ones."
        )
    )
    scratch = "multimodal concat - text"  # the same inputs and fusion, trained with labels
    if scratch in by:
        diff = tuned["gap"] - by[scratch]["gap"]
        text += (
            " Fine-tuning (LP-FT: the head alone for half the steps, then the encoders with it) "
            f"gives {tuned['gap']:.3f}, "
            f"{diff:+.3f} against concat fusion of the same rgb and audio encoders trained from "
            f"scratch ({by[scratch]['gap']:.3f}, MoE head)."
        )
    return text


def findings(rows: list[dict], oracle: dict, budget: str) -> list[str]:
    """Plain statements, each citing the numbers of the table it rests on."""
    by = {r["label"]: r for r in rows}
    out = []

    def gap(label, kind=""):
        return by[label][f"gap_{kind}" if kind else "gap"]

    best = max(rows, key=lambda r: r["gap"])
    out.append(
        f"- Best overall: {best['label']}, GAP {best['gap']:.3f} "
        f"({best['gap'] / oracle['gap']:.1%} of the oracle's {oracle['gap']:.3f})."
    )
    fused = [f"multimodal {f}" for f in FUSIONS if f"multimodal {f}" in by]
    if len(fused) >= 2:
        ranked = sorted(fused, key=lambda m: -gap(m, "cross_modal"))
        first, second = (gap(m, "cross_modal") for m in ranked[:2])
        singles = [m for m in SINGLE if m in by]
        line = (
            "- Cross-modal classes (rgb AND audio evidence) by fusion: "
            + ", ".join(f"{m.split()[1]} {gap(m, 'cross_modal'):.3f}" for m in ranked)
            + f". {ranked[0].split()[1]} leads by {first - second:+.3f} over {ranked[1].split()[1]}"
            + verdict(by[ranked[0]], by[ranked[1]], "gap_cross_modal")
        )
        if singles:
            top = max(singles, key=lambda m: gap(m, "cross_modal"))
            line += (
                f"; against the best single-encoder model ({top}, {gap(top, 'cross_modal'):.3f})"
                f" it is {first - gap(top, 'cross_modal'):+.3f}"
                + verdict(by[ranked[0]], by[top], "gap_cross_modal")
            )
        out.append(line + ".")
    own_kind = {"rgb": "visual", "audio": "audio", "text": "text"}
    for m in fused:
        drops = [
            (d, gap(f"{m} - {d}"), gap(f"{m} - {d}", own_kind[d]), gap(f"{m} - {d}", "cross_modal"))
            for d in MODALITIES
            if f"{m} - {d}" in by
        ]
        if drops:
            per_kind = ", ".join(f"{k} {gap(m, k):.3f}" for k in own_kind.values())
            out.append(
                f"- {m} (GAP {gap(m):.3f}; {per_kind}"
                f"; cross-modal {gap(m, 'cross_modal'):.3f}) without "
                + "; without ".join(
                    f"{d}: GAP {g:.3f} ({g - gap(m):+.3f}), {own_kind[d]} {k:.3f} "
                    f"({k - gap(m, own_kind[d]):+.3f}), cross-modal {x:.3f}"
                    for d, g, k, x in drops
                )
                + "."
            )
    ceiling = oracle["gap_temporal_order_blind"]
    aware = [m for m in ORDER_AWARE if m in by] + [m for m in fused]
    blind = [m for m in SINGLE if m in by and m not in ORDER_AWARE]
    if aware and blind:
        best_blind = max(blind, key=lambda m: gap(m, "temporal"))
        solved = [m for m in aware if gap(m, "temporal") > ceiling]
        out.append(
            "- Temporal classes (A before B vs B before A) need frame order; an order-blind "
            f"model scores at most {ceiling:.3f} on them (the oracle averaged over each pair). "
            + ", ".join(f"{m} {gap(m, 'temporal'):.3f}" for m in aware)
            + f"; best order-blind: {best_blind} {gap(best_blind, 'temporal'):.3f}. Above the "
            f"ceiling: {', '.join(solved) or 'none'}."
        )
    if all(label in by for label in UNSUPERVISED):
        probe, tuned, random = (by[label] for label in UNSUPERVISED)
        out.append(
            "- Unsupervised fusion: linear probe of the audio-visual pretrained encoders GAP "
            f"{probe['gap']:.3f}, on random encoders {random['gap']:.3f} "
            f"({probe['gap'] - random['gap']:+.3f}); fine-tuned {tuned['gap']:.3f}. The "
            f"pretraining ({probe['pretrain_seconds'] / 60:.1f} min, labels never read) finds "
            "each eval video's rgb from its audio with R@10 "
            f"{probe['pretrain_audio_to_rgb_r@10']:.3f} (chance "
            f"{probe['pretrain_chance_r@10']:.3f})."
        )
    sk = [r["label"] for r in rows if r["label"].startswith("sklearn")]
    if sk and "logistic" in by:
        top = max(sk, key=gap)
        listed = ", ".join(f"{m} GAP {gap(m):.3f}" for m in sorted(sk, key=lambda m: -gap(m)))
        out.append(
            f"- Classic baselines on the same video-level features: {listed} "
            f"(fitted on {by[top]['num_train']:,} videos) vs vmjax logistic "
            f"{gap('logistic'):.3f} and moe {gap('moe') if 'moe' in by else float('nan'):.3f} "
            f"(SGD over {by['logistic']['train_videos']:,} videos)."
        )
    weak = [r["label"] for r in rows if r["gap"] < 0.5 * best["gap"]]
    # Without rgb a model cannot see the visual or cross-modal classes: low by construction.
    blind = [m for m in weak if m.endswith(" - rgb")]
    weak = [m for m in weak if m not in blind]
    if blind:
        out.append(
            f"- {len(blind)} rows reach under half the best GAP because they lack rgb, which "
            f"the visual and cross-modal classes need ({', '.join(blind)}); their text column "
            "is the one to read."
        )
    if weak:
        further = (
            "compare them at the full budget (`python benchmarks/zoo.py`)"
            if budget == "quick"
            else "more steps (--config.num_train_steps) would show whether they catch up"
        )
        out.append(
            f"- Caveat: {len(weak)} of {len(rows)} rows reach under half the best GAP at this "
            f"budget ({', '.join(weak)}): undertrained, so their columns say little about the "
            f"architecture; {further}."
        )
    return out


def plot(rows: list[dict], oracle: dict, path: pathlib.Path) -> None:
    """GAP against parameters (log scale) and per-kind GAP of the main rows, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 1.3]}
    )
    family = {"sklearn": ("tab:gray", "s"), "multimodal": ("tab:red", "o")}
    for r in rows:
        colour, marker = family.get(r["label"].split()[0], ("tab:blue", "^"))
        if " - " in r["label"]:
            colour = "tab:orange"
        left.scatter(r["params"], r["gap"], c=colour, marker=marker, s=36)
        if " - " not in r["label"]:
            left.annotate(
                r["label"],
                (r["params"], r["gap"]),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
            )
    left.axhline(oracle["gap"], ls="--", c="k", lw=0.8, label="oracle")
    left.set_xscale("log")
    left.set(
        xlabel="parameters", ylabel="GAP@20", title="GAP vs parameters (orange: a modality removed)"
    )
    left.legend(loc="lower right")
    main = [r for r in rows if " - " not in r["label"]]
    kinds = synthetic.KINDS
    width = 0.8 / len(main)
    x = np.arange(len(kinds))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(main):
        right.bar(
            x + i * width,
            [r[f"gap_{k}"] for k in kinds],
            width,
            label=r["label"],
            color=cmap(i % 20),
        )
    right.scatter(
        x + 0.4 - width / 2,
        [oracle[f"gap_{k}"] for k in kinds],
        marker="_",
        s=600,
        c="k",
        label="oracle",
        zorder=3,
    )
    right.set_xticks(x + 0.4 - width / 2, kinds)
    right.set(ylabel="GAP@20 on the kind's classes", title="GAP per class kind", ylim=(0, 1))
    right.legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _data_overrides(budget: str) -> dict:
    return {k: v for k, v in BUDGETS[budget].items() if k.startswith("data.")}


def _data_config(budget: str):
    """The default config with the budget's embedded-dataset size."""
    config = get_config("")
    apply(config, _data_overrides(budget))
    return config


def _oracle(budget: str) -> dict:
    """oracle.json of the budget's embedded dataset."""
    c = _data_config(budget)
    spec = synthetic.Spec(num_classes=c.data.num_classes, **c.data.synthetic.to_dict())
    return synthetic.read_oracle(os.path.join(os.path.expanduser(c.data.cache_dir), spec.key()))


def lr_sweep(labels, budget, steps, lrs, workdir, sweep_args, path: pathlib.Path) -> dict:
    """One seed per learning rate for each model row (an ablation takes its fusion's rate);
    the best final GAP is chosen. Written to `path` as each row finishes; returns it."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("budget") != budget or saved.get("steps") != steps:
        saved = {"budget": budget, "steps": steps, "rows": {}}
    for label in labels:
        preset, _ = ROWS[label]
        if preset in ("sklearn", "audiovisual") or " - " in label:
            continue
        out = os.path.join(workdir, f"{budget}-{steps}", "lr", label.replace(" ", "_"))
        grid = "optimizer.learning_rate=" + ",".join(f"{lr:g}" for lr in lrs)
        overrides = row_overrides(label, budget, steps)
        del overrides["optimizer.learning_rate"]
        results = run_sweep(sweep_command(preset, overrides, out, 1, grid), sweep_args)
        cells = [c for c in (results or {}).get("cells", []) if c["num_done"]]
        if len(cells) < len(lrs):
            print(f"zoo: {label}: {len(cells)} of {len(lrs)} rates finished ({out})")
            continue
        by_lr = {c["overrides"]["optimizer.learning_rate"]: c["mean"]["gap"] for c in cells}
        chosen = max(by_lr, key=by_lr.get)
        saved["rows"][label] = {"gap_by_lr": by_lr, "chosen": float(chosen)}
        print(f"zoo: {label}: GAP by learning rate {by_lr}; chosen {chosen}", flush=True)
        path.write_text(json.dumps(saved, indent=2))
    return saved


def chosen_lr(label: str, chosen: dict) -> float | None:
    """The swept learning rate of a row, or of the fusion an ablation row removes a modality
    from; None: the preset's CPU rate."""
    rows = chosen.get("rows", {})
    for name in (label, label.split(" - ")[0]):
        if name in rows:
            return rows[name]["chosen"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"budget {BUDGETS['quick']} (steps, batch)"
    )
    parser.add_argument("--rows", default="", help="comma-separated row labels (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--steps", type=int, help="train steps per row (default: the budget's)")
    parser.add_argument("--workdir", default="/tmp/vmjax-zoo", help="per-row sweep directories")
    parser.add_argument(
        "--out", default="", help="default docs/results.md (--quick: results_quick.md)"
    )
    parser.add_argument(
        "--sweep",
        default="",
        help="extra vmjax.sweep flags for every row, e.g. '--parallel 2' or "
        "'--launcher slurm --slurm_option=--gpus-per-task=1' (rows still queued are left out "
        "of the table until a later run of this command finds them finished)",
    )
    parser.add_argument(
        "--lr_sweep",
        action="store_true",
        help="choose each model row's learning rate (one seed per --lrs value) into "
        "results_lr.json beside --out; later runs of the study use the chosen rates",
    )
    parser.add_argument("--lrs", default="0.001,0.003,0.01,0.03", help="--lr_sweep's rates")
    parser.add_argument("--from_json", help="re-render from a saved results JSON")
    parser.add_argument(
        "--update", action="store_true", help="run only --rows and replace them in --out's JSON"
    )
    parser.add_argument("--list", action="store_true", help="print the row labels and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(ROWS))
        return
    budget = "quick" if args.quick else "full"
    steps = args.steps or BUDGETS[budget]["num_train_steps"]
    if args.seeds < 1 or steps < 1:
        parser.error("--seeds and --steps must be at least 1")
    out = args.out or str(ROOT / "docs" / ("results_quick.md" if args.quick else "results.md"))
    lr_path = pathlib.Path(out).with_name(pathlib.Path(out).stem + "_lr.json")
    if args.from_json:
        saved = json.loads(pathlib.Path(args.from_json).read_text())
        study = {k: v for k, v in saved.items() if k != "rows"}
        study.setdefault("steps", BUDGETS[saved["budget"]]["num_train_steps"])
        study.setdefault("seeds", 1)
        write_results(saved["rows"], _oracle(saved["budget"]), out, study)
        print(f"wrote {out}")
        return
    labels = [m.strip() for m in args.rows.split(",") if m.strip()] or list(ROWS)
    unknown = [m for m in labels if m not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; --list shows them")
    sweep_args = shlex.split(args.sweep)
    if args.lr_sweep:
        try:
            lrs = [float(v) for v in args.lrs.split(",")]
        except ValueError:
            parser.error(f"--lrs {args.lrs!r}: expected comma-separated numbers, e.g. 0.001,0.01")
        lr_sweep(labels, budget, steps, lrs, args.workdir, sweep_args, lr_path)
        print(f"wrote {lr_path}")
        return
    chosen = json.loads(lr_path.read_text()) if lr_path.exists() else {}
    if chosen and (chosen["budget"], chosen["steps"]) != (budget, steps):
        chosen = {}  # rates chosen at another budget do not carry over
    study = {"budget": budget, "steps": steps, "seeds": args.seeds}
    study["lr"] = {k: v["chosen"] for k, v in chosen.get("rows", {}).items()}
    previous = {}
    if args.update:
        saved = json.loads(pathlib.Path(out).with_suffix(".json").read_text())
        if (saved["budget"], saved.get("steps"), saved.get("seeds")) != (budget, steps, args.seeds):
            parser.error(
                f"{out} holds budget {saved['budget']}, {saved.get('steps')} steps, "
                f"{saved.get('seeds', 1)} seeds; pass --quick, --steps and --seeds to match"
            )
        previous = {r["label"]: r for r in saved["rows"]}
    start = time.time()
    for label in labels:
        lr = chosen_lr(label, chosen)
        row = run_row(label, budget, args.workdir, args.seeds, steps, lr, sweep_args)
        if row is None:
            continue
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        previous[label] = row
        # Rewritten after every row, so a long run leaves its finished rows behind.
        rows = [previous[m] for m in ROWS if m in previous]
        write_results(rows, _oracle(budget), out, study)
    print(f"wrote {out} in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
