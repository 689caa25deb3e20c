"""Times forward+backward of our LSTM runner against torch.nn.LSTM and Flax's OptimizedLSTMCell.

Usage: python benchmarks/lstm.py [--batch 64] [--frames 300] [--input 1152] [--hidden 1024]
       [--repeats 3] [--unroll 1] [--quick]
Each model computes sum(outputs) and its gradients wrt params and inputs: ours and Flax's as a
jitted value_and_grad, torch's as forward + backward (time-major, its fastest layout on CPU, with
as many threads as this process may use, our weights copied in). Compile time and a warm-up call
are excluded; the models are timed alternately and the median of `--repeats` calls is printed.
torch is only a reference here (skipped when not installed). On GPU, cuDNN's LSTM through
jax.experimental.rnn is timed too.
"""

import argparse
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmjax.models.rnn import RNN


def _seconds(fn: Callable, args: tuple) -> float:
    """Wall seconds of one `fn(*args)`, waiting for the result."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def _time(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds per call of `fn(*args)`, after one compiling call."""
    jax.block_until_ready(fn(*args))
    return float(np.median([_seconds(fn, args) for _ in range(repeats)]))


def _loss_and_grad(apply: Callable) -> Callable:
    """jit(value_and_grad) of sum(apply(params, x)) wrt (params, x)."""
    return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(apply(p, x)), argnums=(0, 1)))


def _cudnn_lstm(x: jax.Array, hidden: int, repeats: int) -> float:
    """Seconds per forward+backward of jax.experimental.rnn's cuDNN LSTM."""
    from jax.experimental import rnn as jax_rnn

    batch, frames, features = x.shape
    weights = jax_rnn.init_lstm_weight(jax.random.key(2), features, hidden, 1, False)
    lengths = jnp.full((batch,), frames, jnp.int32)
    zeros = jnp.zeros((1, batch, hidden), x.dtype)

    def apply(w: jax.Array, x: jax.Array) -> jax.Array:
        outputs, _, _ = jax_rnn.lstm(x, zeros, zeros, w, lengths, features, hidden, 1, 0.0, False)
        return outputs

    return _time(_loss_and_grad(apply), (weights, x), repeats)


def _torch_lstm(params: dict, x: jax.Array, threads: int) -> Callable[[], object] | None:
    """torch.nn.LSTM with our weights: a closure running forward + backward of sum(outputs)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    weights = params["l0"]
    hidden = weights["recurrent_kernel"].shape[0]
    lstm = torch.nn.LSTM(x.shape[-1], hidden)  # time-major: batch_first=True was slower on CPU
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.asarray(weights["input_kernel"]).T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.asarray(weights["recurrent_kernel"]).T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.array(weights["bias"])))
        lstm.bias_hh_l0.zero_()
    frames = torch.from_numpy(np.asarray(x).transpose(1, 0, 2).copy()).requires_grad_()

    def step() -> object:
        lstm.zero_grad(set_to_none=True)
        frames.grad = None
        outputs, _ = lstm(frames)
        loss = outputs.sum()
        loss.backward()
        return loss.item()

    return step


def main() -> None:
    """Builds the LSTMs on the same random frames and prints seconds per step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=300)  # YT8M: up to 300 one-second frames
    parser.add_argument("--input", type=int, default=1152)  # 1024 rgb + 128 audio
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unroll", type=int, default=1)  # ours only; Flax's is left at 1
    parser.add_argument("--quick", action="store_true", help="batch 16, 50 frames, 256 hidden")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.frames, args.input, args.hidden = 16, 50, 288, 256

    x = jax.random.normal(jax.random.key(0), (args.batch, args.frames, args.input))
    # All frames valid: Flax's nn.RNN then does no masking work at all, which only favours it.
    mask = jnp.ones((args.batch, args.frames), bool)

    ours = RNN(hidden_size=args.hidden, cell="lstm", unroll=args.unroll)
    ours_params = ours.init(jax.random.key(1), x, mask)["params"]
    ours_step = _loss_and_grad(lambda p, x: ours.apply({"params": p}, x, mask)[0])
    flax_rnn = nn.RNN(nn.OptimizedLSTMCell(args.hidden))
    flax_params = flax_rnn.init(jax.random.key(1), x)["params"]
    flax_step = _loss_and_grad(lambda p, x: flax_rnn.apply({"params": p}, x))

    threads = len(os.sched_getaffinity(0))
    torch_step = _torch_lstm(ours_params, x, threads)

    ours_loss, _ = ours_step(ours_params, x)  # compile
    jax.block_until_ready(flax_step(flax_params, x))
    if torch_step is not None:
        torch_loss = torch_step()  # warm-up: oneDNN picks and JITs its kernels on the first call
        # Same weights, same frames: a check that the two compute the same thing.
        print(f"loss ours {float(ours_loss):.6g} torch {torch_loss:.6g}")
    # Alternating keeps a change in machine load from landing on one model only.
    ours_times, flax_times, torch_times = [], [], []
    for _ in range(args.repeats):
        ours_times.append(_seconds(ours_step, (ours_params, x)))
        if torch_step is not None:
            torch_times.append(_seconds(torch_step, ()))
        flax_times.append(_seconds(flax_step, (flax_params, x)))
    ours_seconds, flax_seconds = float(np.median(ours_times)), float(np.median(flax_times))

    print(f"backend {jax.default_backend()}")
    print(f"shape batch {args.batch} frames {args.frames} input {args.input} hidden {args.hidden}")
    print(f"repeats {args.repeats} unroll {args.unroll} threads {threads}")
    print("ours_each " + " ".join(f"{t:.3f}" for t in ours_times))
    print("flax_each " + " ".join(f"{t:.3f}" for t in flax_times))
    print(f"ours_seconds {ours_seconds:.4f}")
    print(f"flax_seconds {flax_seconds:.4f}")
    print(f"ratio_flax_over_ours {flax_seconds / ours_seconds:.3f}")
    if torch_step is None:
        print("torch skipped: not installed")
    else:
        torch_seconds = float(np.median(torch_times))
        print("torch_each " + " ".join(f"{t:.3f}" for t in torch_times))
        ratios = " ".join(f"{t / o:.3f}" for t, o in zip(torch_times, ours_times, strict=True))
        print(f"ratio_torch_over_ours_each {ratios}")
        print(f"torch_seconds {torch_seconds:.4f}")
        print(f"ratio_torch_over_ours {torch_seconds / ours_seconds:.3f}")
    if jax.default_backend() == "gpu":
        cudnn_seconds = _cudnn_lstm(x, args.hidden, args.repeats)
        print(f"cudnn_seconds {cudnn_seconds:.4f}")
        print(f"ratio_cudnn_over_ours {cudnn_seconds / ours_seconds:.3f}")
    else:
        print("cudnn skipped: no GPU")


if __name__ == "__main__":
    main()
