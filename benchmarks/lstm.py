"""Times forward+backward of our LSTM runner against Flax's OptimizedLSTMCell in nn.RNN.

Usage: python benchmarks/lstm.py [--batch 64] [--frames 300] [--input 1152] [--hidden 1024]
       [--repeats 3] [--unroll 1] [--quick]
Each model is a jitted value_and_grad of sum(outputs) wrt params and inputs; compile time is
excluded, the two are timed alternately and the median of `--repeats` calls is printed. On GPU,
cuDNN's LSTM through jax.experimental.rnn is timed too.
"""

import argparse
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


def main() -> None:
    """Builds both LSTMs on the same random frames and prints seconds per step."""
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

    jax.block_until_ready(ours_step(ours_params, x))  # compile
    jax.block_until_ready(flax_step(flax_params, x))
    # Alternating the two keeps a change in machine load from landing on one of them only.
    ours_times, flax_times = [], []
    for _ in range(args.repeats):
        ours_times.append(_seconds(ours_step, (ours_params, x)))
        flax_times.append(_seconds(flax_step, (flax_params, x)))
    ours_seconds, flax_seconds = float(np.median(ours_times)), float(np.median(flax_times))

    print(f"backend {jax.default_backend()}")
    print(f"shape batch {args.batch} frames {args.frames} input {args.input} hidden {args.hidden}")
    print(f"repeats {args.repeats} unroll {args.unroll}")
    print("ours_each " + " ".join(f"{t:.3f}" for t in ours_times))
    print("flax_each " + " ".join(f"{t:.3f}" for t in flax_times))
    print(f"ours_seconds {ours_seconds:.4f}")
    print(f"flax_seconds {flax_seconds:.4f}")
    print(f"ratio_flax_over_ours {flax_seconds / ours_seconds:.3f}")
    if jax.default_backend() == "gpu":
        cudnn_seconds = _cudnn_lstm(x, args.hidden, args.repeats)
        print(f"cudnn_seconds {cudnn_seconds:.4f}")
        print(f"ratio_cudnn_over_ours {cudnn_seconds / ours_seconds:.3f}")
    else:
        print("cudnn skipped: no GPU")


if __name__ == "__main__":
    main()
