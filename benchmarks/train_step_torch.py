"""The trainer's frame_moe train step against the same step in eager PyTorch with fused AdamW.

  python benchmarks/train_step_torch.py [--batch 64] [--frames 300] [--steps 10] [--repeats 3]

Ours: `configs/yt8m.py:frame_moe`'s step exactly as the trainer builds it (`vmjax.train.parallel`
on one device, float32): dequantize the uint8 frames, masked mean over frames, the MoE head, the
loss (binary cross-entropy summed over 3,862 classes, mean over videos), gradients, global-norm
clip and AdamW (vmjax.train.optimizer), with the state donated. torch (the reference, when
installed): the same model written as a PyTorch user would (`nn.Linear` gates and experts, the
same log-space MoE), forward, `backward()`, `clip_grad_norm_(foreach=True)` and
`torch.optim.AdamW(fused=True)`, eager, with as many threads as this process may use. Both
start from the same weights and batch (one random batch of the pipeline's shapes, every frame
valid, ~3 labels per video); their first losses are printed to show the same sum is computed.

Timing: one warm-up step each (ours compiles), then `--repeats` rounds of `--steps` steps each,
the two alternating; each round's seconds per step, and the median round's, are printed with
torch / ours (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import jax
import numpy as np
from train_throughput import build_step  # this folder (the script's own) is on sys.path

from vmjax.data import pipeline, yt8m
from vmjax.tools import configs


def our_step(config, batch: dict):
    """(step, state, batch on the device, host params): the trainer's frame_moe step."""
    _, _, _, par, host_state = build_step(config)
    params = jax.tree.map(np.asarray, host_state.params)
    return par.train_step, par.put_state(host_state), par.put_batch(batch), params


def torch_step(config, params: dict, batch: dict):
    """(step, first call's loss) for the same model, weights and batch in eager torch."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    head = params["head"]
    c = batch["labels"].shape[1]
    m = config.model.num_mixtures
    dim = head["gates"]["kernel"].shape[0]

    class FrameMoE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gates = torch.nn.Linear(dim, c * (m + 1), bias=False)
            self.experts = torch.nn.Linear(dim, c * m)

        def forward(self, rgb, audio, mask):
            scale, shift = 4.0 / 255.0, 4.0 / 512.0 - 2.0  # yt8m.dequantize
            x = torch.cat([rgb.float() * scale + shift, audio.float() * scale + shift], -1)
            valid = mask[..., None]
            pooled = torch.where(valid, x, 0.0).sum(1) / valid.sum(1).clamp(min=1)
            gates = self.gates(pooled).view(-1, c, m + 1).log_softmax(-1)
            experts = self.experts(pooled).view(-1, c, m)
            log_p = torch.logsumexp(gates[..., :m] + torch.nn.functional.logsigmoid(experts), -1)
            log_not_p = torch.logsumexp(
                torch.cat(
                    [gates[..., m:], gates[..., :m] + torch.nn.functional.logsigmoid(-experts)],
                    -1,
                ),
                -1,
            )
            return log_p - log_not_p

    model = FrameMoE()
    with torch.no_grad():
        model.gates.weight.copy_(torch.from_numpy(head["gates"]["kernel"].T.copy()))
        model.experts.weight.copy_(torch.from_numpy(head["experts"]["kernel"].T.copy()))
        model.experts.bias.copy_(torch.from_numpy(head["experts"]["bias"].copy()))
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=config.optimizer.learning_rate,
        weight_decay=config.optimizer.weight_decay,
        fused=True,
    )
    rgb, audio = torch.from_numpy(batch["rgb"]), torch.from_numpy(batch["audio"])
    mask = torch.from_numpy(batch["mask"])
    labels = torch.from_numpy(batch["labels"]).float()
    weights = torch.from_numpy(batch["weights"])

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(rgb, audio, mask)
        per_class = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels, reduction="none"
        )
        loss = (per_class.sum(-1) * weights).sum() / weights.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.clip_norm, foreach=True)
        opt.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each")
    args = parser.parse_args()

    root = pathlib.Path(__file__).resolve().parents[1]
    config = configs.get_config(root / "configs" / "yt8m.py", "frame_moe")
    config.batch_size, config.data.max_frames = args.batch, args.frames
    config.data.workers = 0
    spec = pipeline.BatchSpec.from_config(config.data)
    rng = np.random.default_rng(0)
    batch = {k: v for k, v in pipeline.example_batch(spec, args.batch).items() if k != "ids"}
    batch["rgb"] = rng.integers(0, 256, batch["rgb"].shape, dtype=np.uint8)
    batch["audio"] = rng.integers(0, 256, batch["audio"].shape, dtype=np.uint8)
    batch["mask"][:] = True
    batch["num_frames"][:] = args.frames
    batch["weights"][:] = 1
    batch["labels"] = (rng.random(batch["labels"].shape) < 3 / spec.num_classes).astype(np.uint8)
    assert batch["rgb"].shape[-1] + batch["audio"].shape[-1] == yt8m.RGB_DIM + yt8m.AUDIO_DIM

    ours, state, device_batch, params = our_step(config, batch)
    state, metrics = ours(state, device_batch)  # compiles
    print(f"first_loss_ours {float(metrics['loss']):.4f}")
    try:
        theirs = torch_step(config, params, batch)
        print(f"first_loss_torch {theirs():.4f}")
    except ImportError:
        theirs = None
        print("torch skipped: not installed")

    ours_s, torch_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = ours(state, device_batch)
        jax.block_until_ready(state)
        ours_s.append((time.perf_counter() - start) / args.steps)
        if theirs is not None:
            start = time.perf_counter()
            for _ in range(args.steps):
                theirs()
            torch_s.append((time.perf_counter() - start) / args.steps)
    print("ours_ms_each " + " ".join(f"{1e3 * s:.1f}" for s in ours_s))
    print(f"ours_ms {1e3 * statistics.median(ours_s):.1f}")
    if torch_s:
        print("torch_ms_each " + " ".join(f"{1e3 * s:.1f}" for s in torch_s))
        print(f"torch_ms {1e3 * statistics.median(torch_s):.1f}")
        ratios = [t / o for t, o in zip(torch_s, ours_s, strict=True)]
        print("ratio_torch_over_ours_each " + " ".join(f"{r:.3f}" for r in ratios))
        print(f"ratio_torch_over_ours {statistics.median(torch_s) / statistics.median(ours_s):.3f}")


if __name__ == "__main__":
    main()
