"""The comparative study: every zoo model and fusion method on the embedded data -> docs/results.md.

  python benchmarks/zoo.py --quick     # every row at a small budget -> docs/results_quick.md
  python benchmarks/zoo.py             # the full study -> docs/results.md
  python benchmarks/zoo.py --rows "multimodal gated,multimodal gated - audio" --update
  python benchmarks/zoo.py --from_json docs/results.json   # re-render table, findings, plot

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
import shutil
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
    "multimodal": {
        "model.hidden_size": 128,
        "model.vivit.hidden_size": 128,
        "model.vivit.num_layers": 3,
        "model.vivit.mlp_dim": 256,
        "model.fusion_layers": 2,
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
        "model.fusion_layers": 1,
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


def run_row(label: str, budget: str, workdir: str) -> dict:
    """Trains and evaluates one row; returns its metrics, size, speed and command."""
    preset, extra = ROWS[label]
    if preset == "sklearn":
        return _run_baseline(label, extra["model"], budget)
    if preset == "audiovisual":
        return _run_unsupervised(label, extra["stage"], budget, workdir)
    from vmjax.tools.summary import summarize
    from vmjax.train import loop

    steps, batch_size = (BUDGETS[budget][k] for k in ("num_train_steps", "batch_size"))
    overrides = {
        **CPU["common"],
        **CPU.get(preset, {}),
        **(QUICK_SIZES.get(preset, {}) if budget == "quick" else {}),
        **extra,
        **BUDGETS[budget],
        "eval_every": steps,
        "checkpoint_every": steps,
    }
    config = get_config(preset)
    apply(config, overrides)
    row_dir = os.path.join(workdir, label.replace(" ", "_"))
    shutil.rmtree(row_dir, ignore_errors=True)
    start = time.time()
    result = loop.train_and_evaluate(config, row_dir)
    seconds = time.time() - start
    args = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    return {
        "label": label,
        "params": summarize(config)["params"],
        "seconds": round(seconds, 1),
        "examples_per_s": round(steps * batch_size / seconds, 1),
        "train_videos": steps * batch_size,
        "command": f"python -m vmjax.main --config configs/yt8m.py:{preset} --workdir W {args}",
        **{k: v for k, v in result.items() if k.startswith(("gap", "map", "hit", "oracle"))},
    }


def _multimodal_overrides(budget: str) -> dict:
    """The multimodal rows' CPU sizes and the budget: the unsupervised rows' encoders match."""
    steps = BUDGETS[budget]["num_train_steps"]
    return {
        **CPU["common"],
        **CPU["multimodal"],
        **(QUICK_SIZES["multimodal"] if budget == "quick" else {}),
        **BUDGETS[budget],
        "eval_every": steps,
        "checkpoint_every": steps,
    }


def _args(overrides: dict) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def _pretrain(budget: str, workdir: str) -> dict:
    """The audio-visual pretraining run of `budget`, trained once and reused by later rows."""
    from vmjax.train import audiovisual

    overrides = {**_multimodal_overrides(budget), **PRETRAIN}
    run_dir = os.path.join(workdir, f"audiovisual_pretrain_{budget}")
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
        f"{_args(overrides)}",
    }
    done.write_text(json.dumps(saved, indent=2))
    return saved


def _run_unsupervised(label: str, stage: str, budget: str, workdir: str) -> dict:
    """A head on the concatenated rgb and audio encoders: pretrained (probe, fine-tune) or not."""
    from vmjax.tools.summary import summarize
    from vmjax.train import loop

    steps, batch_size = (BUDGETS[budget][k] for k in ("num_train_steps", "batch_size"))
    overrides = _multimodal_overrides(budget)
    if stage != "finetune":
        overrides.update(PROBE)
    else:  # LP-FT within the budget: the head alone for half the steps, then everything
        overrides["freeze_steps"] = BUDGETS[budget]["num_train_steps"] // 2
    config = get_config(stage, "audiovisual.py")
    apply(config, overrides)
    pre = None
    command = ""
    if stage != "random_probe":
        pre = _pretrain(budget, workdir)
        config.init_from.workdir = pre["workdir"]
        command = f"{pre['command']} && "
        overrides = {**overrides, "init_from.workdir": "PRE"}
    row_dir = os.path.join(workdir, label.replace(" ", "_"))
    shutil.rmtree(row_dir, ignore_errors=True)
    start = time.time()
    result = loop.train_and_evaluate(config, row_dir)
    seconds = time.time() - start
    command += (
        f"python -m vmjax.main --config configs/audiovisual.py:{stage} --workdir W "
        f"{_args(overrides)}"
    )
    row = {
        "label": label,
        "params": summarize(config)["params"],
        "seconds": round(seconds, 1),
        "examples_per_s": round(steps * batch_size / seconds, 1),
        "train_videos": steps * batch_size,
        "command": command,
        **{k: v for k, v in result.items() if k.startswith(("gap", "map", "hit", "oracle"))},
    }
    if pre:
        row["pretrain_seconds"] = pre["seconds"]
        row["pretrain_audio_to_rgb_r@10"] = pre["audio_to_rgb_r@10"]
        row["pretrain_chance_r@10"] = min(10 / pre["num_videos"], 1.0)
    return row


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


def write_results(rows: list[dict], oracle: dict, path: str, budget: str) -> None:
    """The markdown table with findings and commands, the rows as JSON, and the PNG."""
    kinds = synthetic.KINDS
    steps, batch_size = (BUDGETS[budget][k] for k in ("num_train_steps", "batch_size"))
    num_validate = _data_config(budget).data.synthetic.num_validate
    # The unsupervised rows share one pretraining run: counted once.
    pretrain = max((r.get("pretrain_seconds", 0.0) for r in rows), default=0.0)
    minutes = (sum(r["seconds"] for r in rows) + pretrain) / 60
    out = pathlib.Path(path)
    image = out.parent / "images" / f"{out.stem}.png"
    head = "| model | GAP | mAP | Hit@1 | GAP / oracle | " + " | ".join(kinds)
    missing = [label for label in ROWS if label not in {r["label"] for r in rows}]
    lines = [
        "# The comparative study: models and fusion methods on the embedded dataset",
        "",
        *(
            [
                f"> Partial: {len(rows)} of {len(ROWS)} rows. The rest: `python benchmarks/zoo.py"
                f"{' --quick' if budget == 'quick' else ''} --update --rows "
                f'"{",".join(missing)}"`.',
                "",
            ]
            if missing
            else []
        ),
        f"Written by `python benchmarks/zoo.py{' --quick' if budget == 'quick' else ''}`: "
        f"{len(rows)} rows in {minutes:.0f} min of wall time on a 2-core CPU (the rows run one "
        "after another; this is the sum of their training and evaluation times, and of the "
        "unsupervised rows' shared pretraining). "
        f"Every vmjax model trains {steps} steps of {batch_size} videos from its "
        "`configs/yt8m.py:<model>` preset at CPU size (each row's command is below) and is "
        f"evaluated on the {num_validate:,} validation videos of the embedded dataset. GAP@20, "
        "mAP and Hit@1 are the official metrics; GAP / oracle divides by the generating "
        "oracle's GAP "
        "(label noise keeps it below 1); the kind columns are GAP@20 over each class kind "
        "(visual, audio, cross-modal, temporal, text). `multimodal F - M` is fusion F with "
        f"modality M removed. The unsupervised rows are the third family, unsupervised "
        "fusion: a logistic head on the multimodal rgb and audio encoders after audio-visual "
        "contrastive pretraining on the train videos without their labels (configs/"
        "audiovisual.py, as many steps and videos as a row; its command precedes the row's), "
        "trained alone (probe) or with the encoders (fine-tune); random-encoder probe is the "
        "same probe on untrained encoders. "
        f"scikit-learn rows fit {BASELINE_TRAIN[budget]:,} train videos' "
        "video-level features (mean rgb + mean audio); their params count fitted coefficients "
        "or tree nodes. train ex/s is wall-clock throughput of the whole row (evaluation "
        "included; for scikit-learn: train videos / fit seconds) on a shared VM, where the "
        "same row varies by about 30% between runs. Views: every row reads the embedded "
        "dataset's per-frame features, one view per video (the whole clip of up to "
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
            f"| {r['label']} | {r['gap']:.3f} | {r['map']:.3f} | {r['hit_at_1']:.3f} | "
            f"{r['gap'] / oracle['gap']:.3f} | "
            + " | ".join(f"{r[f'gap_{k}']:.3f}" for k in kinds)
            + f" | {r['params']:,} | {r['examples_per_s']:,.0f} |"
        )
    summary = conclusions(rows, budget)
    if summary:
        lines += ["", "## Conclusions", "", summary]
    lines += ["", "## Findings (computed from the rows above)", ""] + findings(rows, oracle, budget)
    lines += ["", "## Commands (W = any work directory)", ""]
    lines += [f"- {r['label']}: `{r['command']}`" for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"budget": budget, "rows": rows}, indent=2))
    plot(rows, oracle, image)


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
            f"{name(top)} fusion wins ({gap(top, 'cross_modal'):.3f} GAP) ahead of {margins}"
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
                "them: a mixture of experts over mean rgb and audio features learns those "
                "conjunctions too."
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
                f"({gap(late):.3f} -> {gap(late + ' - audio'):.3f})."
                if helped
                else "."
            )
        )
    bottleneck = "multimodal bottleneck"
    if gap(bottleneck) < gap(top) and spread >= 0.02:
        text.append(
            f"The MBT bottleneck, which lets modalities exchange information only through a few "
            f"shared tokens, trails {name(top)} by {gap(top) - gap(bottleneck):.3f} GAP at "
            f"this budget and trains at {by[bottleneck]['examples_per_s']:.0f} ex/s against "
            f"{name(top)}'s {by[top]['examples_per_s']:.0f}."
        )
    if singles:
        best_single = max(singles, key=gap)
        if gap(best_single) > gap(overall):
            edge = gap(overall, "text") - gap(best_single, "text")
            text.append(
                f"No multimodal model beats the best single-encoder model ({best_single}, GAP "
                f"{gap(best_single):.3f}) overall: the visual and audio kinds, "
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
            f"a margin of {margin:+.3f}"
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
            + f". {ranked[0].split()[1]} wins by {first - second:+.3f} over {ranked[1].split()[1]}"
        )
        if singles:
            top = max(singles, key=lambda m: gap(m, "cross_modal"))
            line += (
                f"; against the best single-encoder model ({top}, {gap(top, 'cross_modal'):.3f})"
                f" it is {first - gap(top, 'cross_modal'):+.3f}"
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
    parser.add_argument("--workdir", default="/tmp/vmjax-zoo", help="per-row run directories")
    parser.add_argument(
        "--out", default="", help="default docs/results.md (--quick: results_quick.md)"
    )
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
    out = args.out or str(ROOT / "docs" / ("results_quick.md" if args.quick else "results.md"))
    if args.from_json:
        saved = json.loads(pathlib.Path(args.from_json).read_text())
        write_results(saved["rows"], _oracle(saved["budget"]), out, saved["budget"])
        print(f"wrote {out}")
        return
    labels = [m.strip() for m in args.rows.split(",") if m.strip()] or list(ROWS)
    unknown = [m for m in labels if m not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; --list shows them")
    previous = {}
    if args.update:
        saved = json.loads(pathlib.Path(out).with_suffix(".json").read_text())
        if saved["budget"] != budget:
            parser.error(f"{out} holds the {saved['budget']} budget; pass --quick to match")
        previous = {r["label"]: r for r in saved["rows"]}
    start = time.time()
    for label in labels:
        row = run_row(label, budget, args.workdir)
        print(json.dumps(row), flush=True)
        previous[label] = row
        # Rewritten after every row, so a long run leaves its finished rows behind.
        write_results([previous[m] for m in ROWS if m in previous], _oracle(budget), out, budget)
    print(f"wrote {out} in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
