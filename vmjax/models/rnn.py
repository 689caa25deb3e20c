"""LSTM and GRU cells written from their gate equations, and a masked multi-layer runner.

Sources: the LSTM (Hochreiter & Schmidhuber 1997) with a forget gate (Gers et al. 2000) and the
GRU (Cho et al. 2014, arXiv:1406.1078, eqs. 5-8), both in the form PyTorch documents for
torch.nn.LSTM and torch.nn.GRU (the GRU's reset gate multiplies W_hn h + b_hn, after the
matmul), which the cells' docstrings write out and tests/models/test_rnn.py checks in numpy.

Each cell keeps its weights in a layout that lets the runner hoist the input projection out of
the time loop: `input_kernel: [in, G * H]` (gate blocks side by side, in PyTorch's gate order),
an input bias, and `recurrent_kernel: [H, G * H]`. `RNN` multiplies all frames by
`input_kernel` in one matmul and scans over time only for `h @ recurrent_kernel` and the gate
math, with the state kept feature-major (`[H, B]`) so that the per-step matmul reads the kernel
in place. Its backward pass is written by hand (`jax.custom_vjp`) so that each weight gradient is
one matmul over all T * B rows rather than a per-step accumulation; benchmarks/lstm.py times it
against torch.nn.LSTM and Flax's `OptimizedLSTMCell` in `nn.RNN`. The custom VJP means reverse
mode only: `jax.jvp`/`jax.jacfwd` through `RNN` are not supported.

Porting PyTorch weights: `rnn_params_from_torch(module.state_dict(), "lstm")` gives the params
tree of an `RNN` with the same `num_layers`/`bidirectional`; the cells are named like PyTorch's
key suffixes (`l0`, `l0_reverse`, `l1`, ...), so `weight_ih_l1_reverse` lands in
`params["l1_reverse"]`. For one layer at a time use `lstm_params_from_torch` /
`gru_params_from_torch` and put the result at that name.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Weights = dict[str, jax.Array]
Carry = Any  # (h, c) for the LSTM, h for the GRU.


def _weight_grad(x: jax.Array, d: jax.Array) -> jax.Array:
    """`sum over leading axes of x^T d` for x: [..., K], d: [..., N]; returns [K, N]."""
    x = x.reshape(-1, x.shape[-1])
    # XLA folds a plain x.T into a dot that contracts over the long T*B axis, which runs at
    # about half speed on CPU; the barrier makes it materialize x^T first (one cheap copy).
    x_t = jax.lax.optimization_barrier(x.T)
    return x_t @ d.reshape(-1, d.shape[-1])


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` for x: [..., K]; its kernel gradient goes through `_weight_grad`."""
    return x @ kernel


def _matmul_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple]:
    return x @ kernel, (x, kernel)


def _matmul_bwd(residuals: tuple, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    return (d @ kernel.T).astype(x.dtype), _weight_grad(x, d).astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _blockwise_orthogonal(num_gates: int) -> Callable[..., jax.Array]:
    """Init for `[H, G * H]` whose every `[H, H]` gate block is orthogonal."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        hidden, width = shape
        if width != num_gates * hidden:
            raise ValueError(f"recurrent_kernel shape {shape}: expected ({hidden}, {num_gates}*H)")
        keys = jax.random.split(key, num_gates)
        blocks = [nn.initializers.orthogonal()(k, (hidden, hidden), dtype) for k in keys]
        return jnp.concatenate(blocks, axis=1)

    return init


def _lstm_bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Zeros except 1.0 on the forget gate, so early training does not forget by default."""
    del key
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1.0)


class LSTMCell(nn.Module):
    """LSTM cell, PyTorch gate order (i, f, g, o); carry is (h, c).

    i  = sigmoid(W_ii x + W_hi h + b_i)
    f  = sigmoid(W_if x + W_hf h + b_f)
    g  = tanh(W_ig x + W_hg h + b_g)
    o  = sigmoid(W_io x + W_ho h + b_o)
    c' = f * c + i * g
    h' = o * tanh(c')
    Params: `input_kernel` [in, 4H] = [W_ii | W_if | W_ig | W_io] transposed (lecun normal),
    `bias` [4H] = b_i..b_o (PyTorch's b_ih + b_hh; zeros, forget gate 1.0), `recurrent_kernel`
    [H, 4H] = [W_hi | W_hf | W_hg | W_ho] transposed (each H x H block orthogonal).
    """

    hidden_size: int
    num_gates: ClassVar[int] = 4
    # `update` sees only gates_x + gates_h, so both have the same gradient.
    gates_added: ClassVar[bool] = True

    @nn.compact
    def weights(self, input_size: int) -> Weights:
        """Creates (at init) and returns this cell's params for inputs of size `input_size`."""
        width = self.num_gates * self.hidden_size
        return {
            "input_kernel": self.param(
                "input_kernel", nn.initializers.lecun_normal(), (input_size, width)
            ),
            "bias": self.param("bias", _lstm_bias_init, (width,)),
            "recurrent_kernel": self.param(
                "recurrent_kernel", _blockwise_orthogonal(self.num_gates), (self.hidden_size, width)
            ),
        }

    @staticmethod
    def project(w: Weights, x: jax.Array) -> jax.Array:
        """Input half of all gate pre-activations: `x @ input_kernel + bias`, [..., 4H]."""
        return _matmul(x, w["input_kernel"]) + w["bias"]

    @staticmethod
    def recurrent(w: Weights, h: jax.Array) -> jax.Array:
        """The hidden half of all gate pre-activations: `h @ recurrent_kernel`, [B, 4H]."""
        return h @ w["recurrent_kernel"]

    @staticmethod
    def update(carry: Carry, gates_x: jax.Array, gates_h: jax.Array, axis: int = -1) -> Carry:
        """The elementwise rest of a step, given both halves of the pre-activations.

        `axis` is where the gate blocks sit: -1 for `[B, 4H]`, 0 for the runner's `[4H, B]`.
        """
        _, c = carry
        i, f, g, o = jnp.split(gates_x + gates_h, 4, axis=axis)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return h, c

    @staticmethod
    def hidden(carry: Carry) -> jax.Array:
        """The h part of the carry."""
        return carry[0]

    @nn.nowrap
    def initialize_carry(self, batch_size: int, dtype: Any = jnp.float32) -> Carry:
        """Zero (h, c)."""
        zeros = jnp.zeros((batch_size, self.hidden_size), dtype)
        return zeros, zeros

    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One step on `x: [batch, in]`; returns (new carry, h')."""
        w = self.weights(x.shape[-1])
        carry = self.update(carry, self.project(w, x), self.recurrent(w, self.hidden(carry)))
        return carry, self.hidden(carry)


class GRUCell(nn.Module):
    """GRU cell with PyTorch semantics (r, z, n); carry is h.

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
    Params: `input_kernel` [in, 3H] = [W_ir | W_iz | W_in] transposed (lecun normal),
    `input_bias` [3H] (zeros), `recurrent_kernel` [H, 3H] = [W_hr | W_hz | W_hn] transposed (each
    block orthogonal), `recurrent_bias` [3H] (zeros). The recurrent bias cannot be folded into the
    input bias because b_hn sits inside r * (...).
    """

    hidden_size: int
    num_gates: ClassVar[int] = 3
    gates_added: ClassVar[bool] = False  # r multiplies the hidden half of n only

    @nn.compact
    def weights(self, input_size: int) -> Weights:
        """Creates (at init) and returns this cell's params for inputs of size `input_size`."""
        width = self.num_gates * self.hidden_size
        return {
            "input_kernel": self.param(
                "input_kernel", nn.initializers.lecun_normal(), (input_size, width)
            ),
            "input_bias": self.param("input_bias", nn.initializers.zeros, (width,)),
            "recurrent_kernel": self.param(
                "recurrent_kernel", _blockwise_orthogonal(self.num_gates), (self.hidden_size, width)
            ),
            "recurrent_bias": self.param("recurrent_bias", nn.initializers.zeros, (width,)),
        }

    @staticmethod
    def project(w: Weights, x: jax.Array) -> jax.Array:
        """Input half of all gate pre-activations: `x @ input_kernel + input_bias`, [..., 3H]."""
        return _matmul(x, w["input_kernel"]) + w["input_bias"]

    @staticmethod
    def recurrent(w: Weights, h: jax.Array) -> jax.Array:
        """The hidden half of all gate pre-activations: `h @ recurrent_kernel + bias`, [B, 3H]."""
        return h @ w["recurrent_kernel"] + w["recurrent_bias"]

    @staticmethod
    def update(carry: Carry, gates_x: jax.Array, gates_h: jax.Array, axis: int = -1) -> Carry:
        """The elementwise rest of a step, given both halves of the pre-activations.

        `axis` is where the gate blocks sit: -1 for `[B, 3H]`, 0 for the runner's `[3H, B]`.
        """
        h = carry
        x_r, x_z, x_n = jnp.split(gates_x, 3, axis=axis)
        h_r, h_z, h_n = jnp.split(gates_h, 3, axis=axis)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    @staticmethod
    def hidden(carry: Carry) -> jax.Array:
        """The carry is h itself."""
        return carry

    @nn.nowrap
    def initialize_carry(self, batch_size: int, dtype: Any = jnp.float32) -> Carry:
        """Zero h."""
        return jnp.zeros((batch_size, self.hidden_size), dtype)

    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One step on `x: [batch, in]`; returns (h', h')."""
        w = self.weights(x.shape[-1])
        carry = self.update(carry, self.project(w, x), self.recurrent(w, self.hidden(carry)))
        return carry, self.hidden(carry)


CellType = type[LSTMCell] | type[GRUCell]
CELLS: dict[str, CellType] = {"lstm": LSTMCell, "gru": GRUCell}


def _masked_update(
    cell: CellType, carry: Carry, gates_x: jax.Array, gates_h: jax.Array, mask: jax.Array
) -> tuple[Carry, jax.Array]:
    """`cell.update` on `[G*H, B]` gates where `mask: [B]` is True, the old carry elsewhere.

    Also returns h, or 0 where masked.
    """
    keep = mask[None, :]
    new = cell.update(carry, gates_x, gates_h, axis=0)
    carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
    return carry, jnp.where(keep, cell.hidden(carry), 0)


def _gates_h(w_rec: Weights, kernel_t: jax.Array, h: jax.Array) -> jax.Array:
    """`cell.recurrent` transposed: `kernel^T h^T (+ bias)` for `h: [H, B]`; returns `[G*H, B]`."""
    gates_h = kernel_t @ h
    if "recurrent_bias" in w_rec:
        gates_h = gates_h + w_rec["recurrent_bias"][:, None]
    return gates_h


def _transposed(kernel: jax.Array) -> jax.Array:
    """`kernel.T` as its own row-major array, so that no dot in a loop reads it transposed."""
    return jax.lax.optimization_barrier(kernel.T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(
    cell: CellType,
    reverse: bool,
    unroll: int,
    w_rec: Weights,
    carry: Carry,
    gates_x: jax.Array,
    mask: jax.Array,
) -> tuple[Carry, jax.Array]:
    """Scans `cell` over time-major `gates_x: [T, B, G*H]`; returns (final carry, hs [T, B, H]).

    The carry is feature-major (leaves `[H, B]`), and so are the gates inside the loop, so each
    step's matmul is `kernel^T [G*H, H] @ h [H, B]` with the weight on the left: XLA:CPU's dot
    (YNNPACK) reads it in place there, where `h [B, H] @ kernel` repacked the whole kernel every
    step (at H=1024 a 16 MB copy, a quarter of the step's matmul time). Each step transposes only
    its own [B, G*H] slice of `gates_x` and its [H, B] output.
    `w_rec` holds `recurrent_kernel` and optionally `recurrent_bias`, which the backward pass
    differentiates by hand: `cell.recurrent` must be `h @ recurrent_kernel (+ recurrent_bias)`.
    """
    kernel_t = _transposed(w_rec["recurrent_kernel"])

    def body(carry: Carry, inputs: tuple[jax.Array, jax.Array]) -> tuple[Carry, jax.Array]:
        gates_x_t, mask_t = inputs
        gates_h_t = _gates_h(w_rec, kernel_t, cell.hidden(carry))
        carry, h = _masked_update(cell, carry, gates_x_t.T, gates_h_t, mask_t)
        return carry, h.T

    return jax.lax.scan(body, carry, (gates_x, mask), reverse=reverse, unroll=unroll)


def _recurrence_fwd(
    cell: CellType,
    reverse: bool,
    unroll: int,
    w_rec: Weights,
    carry: Carry,
    gates_x: jax.Array,
    mask: jax.Array,
) -> tuple[tuple[Carry, jax.Array], tuple]:
    """`_recurrence`, also keeping each step's incoming carry and `gates_h` for the backward."""
    kernel_t = _transposed(w_rec["recurrent_kernel"])

    def body(carry: Carry, inputs: tuple[jax.Array, jax.Array]) -> tuple[Carry, tuple]:
        gates_x_t, mask_t = inputs
        gates_h_t = _gates_h(w_rec, kernel_t, cell.hidden(carry))
        new, h = _masked_update(cell, carry, gates_x_t.T, gates_h_t, mask_t)
        return new, (h.T, carry, gates_h_t)

    final, (hs, carries, gates_h) = jax.lax.scan(
        body, carry, (gates_x, mask), reverse=reverse, unroll=unroll
    )
    return (final, hs), (w_rec, gates_x, mask, carries, gates_h)


def _recurrence_bwd(
    cell: CellType, reverse: bool, unroll: int, residuals: tuple, cotangents: tuple
) -> tuple:
    """Backward scan for the carry; the recurrent weight gradient as one matmul after it.

    Plain autodiff of the scan would accumulate d recurrent_kernel += h_t^T d gates_h_t inside
    the loop: a [H, G*H] read-modify-write per step through a matmul with only B-deep
    contraction. Emitting d gates_h and contracting over all T * B at once ran about twice as fast
    on a 2-core CPU. The LSTM's gates see only gates_x + gates_h, so one d gates serves both.
    """
    w_rec, gates_x, mask, carries, gates_h = residuals
    d_final, d_hs = cotangents
    # d h^T = kernel [H, G*H] @ d gates_h^T [G*H, B]: the stored kernel is the left operand as is.
    kernel = w_rec["recurrent_kernel"]

    def body(d_carry: Carry, inputs: tuple) -> tuple[Carry, tuple]:
        gates_x_t, mask_t, carry_t, gates_h_t, d_h_t = inputs
        _, update_vjp = jax.vjp(
            lambda c, x, h: _masked_update(cell, c, x.T, h, mask_t), carry_t, gates_x_t, gates_h_t
        )
        d_carry_t, d_gates_x_t, d_gates_h_t = update_vjp((d_carry, d_h_t.T))
        _, hidden_vjp = jax.vjp(cell.hidden, carry_t)
        (d_carry_via_h,) = hidden_vjp(kernel @ d_gates_h_t)
        d_gates = (d_gates_x_t,) if cell.gates_added else (d_gates_x_t, d_gates_h_t.T)
        return jax.tree.map(jnp.add, d_carry_t, d_carry_via_h), d_gates

    d_carry, d_gates = jax.lax.scan(
        body, d_final, (gates_x, mask, carries, gates_h, d_hs), reverse=not reverse, unroll=unroll
    )
    d_gates_x, d_gates_h = (d_gates[0], d_gates[0]) if cell.gates_added else d_gates
    h_in = einops.rearrange(cell.hidden(carries), "t h b -> (t b) h")
    d_w_rec = {"recurrent_kernel": _weight_grad(h_in, d_gates_h)}
    if "recurrent_bias" in w_rec:
        d_w_rec["recurrent_bias"] = jnp.sum(d_gates_h, axis=(0, 1))
    d_w_rec = {k: v.astype(w_rec[k].dtype) for k, v in d_w_rec.items()}
    return d_w_rec, d_carry, d_gates_x, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class RNN(nn.Module):
    """Masked multi-layer, optionally bidirectional LSTM/GRU over `[batch, time, dim]` frames.

    Called as `rnn(x, mask)` with `mask: [batch, time]` True at valid (left-aligned) frames.
    Returns `(outputs [B, T, H * dirs], final_h [B, H * dirs])`, forward half first. Padded steps
    leave the state untouched and output zeros; `final_h` is the state after the last valid frame
    (forward) and after frame 0 (backward); a 0-frame row gives zeros. With
    `return_sequences=False`, `outputs` is None. `unroll` is passed to `jax.lax.scan`.
    """

    hidden_size: int
    cell: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = False
    return_sequences: bool = True
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        if self.cell not in CELLS:
            raise ValueError(f"RNN.cell={self.cell!r} is unknown; expected one of {sorted(CELLS)}")
        if x.ndim != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"RNN expects x: [batch, time, dim] and mask: [batch, time]; "
                f"got x {x.shape}, mask {mask.shape}"
            )
        cell_type = CELLS[self.cell]
        mask = mask.astype(bool)
        # Padded frames may hold garbage (even inf/NaN); zeroing them keeps it out of the
        # gradients, where `where` alone would still multiply NaN by a zero cotangent.
        x = jnp.where(mask[..., None], x, 0)
        # Time-major once for all layers: scan slices the leading axis.
        xs = einops.rearrange(x, "b t d -> t b d")
        mask = einops.rearrange(mask, "b t -> t b")
        directions = (False, True) if self.bidirectional else (False,)
        for layer in range(self.num_layers):
            outputs, finals = [], []
            for reverse in directions:
                cell = cell_type(
                    self.hidden_size, name=f"l{layer}" + ("_reverse" if reverse else "")
                )
                w = cell.weights(xs.shape[-1])
                # One matmul over all frames; only h @ recurrent_kernel stays in the scan.
                gates_x = cell.project(w, xs)
                w_rec = {k: v for k, v in w.items() if k.startswith("recurrent_")}
                dtype = jnp.result_type(gates_x, w_rec["recurrent_kernel"])
                # Feature-major state: see `_recurrence`.
                carry = jax.tree.map(jnp.transpose, cell.initialize_carry(x.shape[0], dtype))
                # A plain reverse scan is exactly each sequence read backwards: frames are
                # right-padded, so the padded steps come first and leave the zero carry alone.
                carry, hs = _recurrence(
                    cell_type, reverse, self.unroll, w_rec, carry, gates_x, mask
                )
                outputs.append(hs)
                finals.append(cell_type.hidden(carry).T)
            xs = jnp.concatenate(outputs, axis=-1)
        final_h = jnp.concatenate(finals, axis=-1)
        if not self.return_sequences:
            return None, final_h
        return einops.rearrange(xs, "t b h -> b t h"), final_h


def lstm_params_from_torch(
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One `nn.LSTM` layer's arrays (weight_ih [4H, in], weight_hh [4H, H]) -> `LSTMCell` params."""
    weight_ih, weight_hh = np.asarray(weight_ih), np.asarray(weight_hh)
    _check_torch_shapes("lstm", 4, weight_ih, weight_hh, bias_ih, bias_hh)
    bias = np.zeros(weight_ih.shape[0], weight_ih.dtype)
    # PyTorch adds both biases to every gate, so they collapse into one.
    for b in (bias_ih, bias_hh):
        if b is not None:
            bias = bias + np.asarray(b)
    return {
        "input_kernel": np.ascontiguousarray(weight_ih.T),
        "bias": bias,
        "recurrent_kernel": np.ascontiguousarray(weight_hh.T),
    }


def gru_params_from_torch(
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One `nn.GRU` layer's arrays (weight_ih [3H, in], weight_hh [3H, H]) -> `GRUCell` params."""
    weight_ih, weight_hh = np.asarray(weight_ih), np.asarray(weight_hh)
    _check_torch_shapes("gru", 3, weight_ih, weight_hh, bias_ih, bias_hh)
    zeros = np.zeros(weight_ih.shape[0], weight_ih.dtype)
    return {
        "input_kernel": np.ascontiguousarray(weight_ih.T),
        "input_bias": zeros if bias_ih is None else np.asarray(bias_ih),
        "recurrent_kernel": np.ascontiguousarray(weight_hh.T),
        "recurrent_bias": zeros if bias_hh is None else np.asarray(bias_hh),
    }


def _check_torch_shapes(
    cell: str,
    num_gates: int,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None,
    bias_hh: np.ndarray | None,
) -> None:
    """Raises if the arrays are not one PyTorch layer of `num_gates` gates."""
    hidden = weight_hh.shape[-1] if weight_hh.ndim == 2 else 0
    width = num_gates * hidden
    problems = []
    if weight_hh.ndim != 2 or weight_hh.shape[0] != width:
        problems.append(f"weight_hh {weight_hh.shape}, expected ({num_gates}*H, H)")
    if weight_ih.ndim != 2 or weight_ih.shape[0] != width:
        problems.append(f"weight_ih {weight_ih.shape}, expected ({width}, in)")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and np.shape(b) != (width,):
            problems.append(f"{name} {np.shape(b)}, expected ({width},)")
    if problems:
        raise ValueError(f"{cell}_params_from_torch: " + "; ".join(problems))


def rnn_params_from_torch(
    state_dict: Mapping[str, Any], cell: str = "lstm", prefix: str = ""
) -> dict[str, dict[str, np.ndarray]]:
    """A PyTorch `nn.LSTM`/`nn.GRU` state_dict (`weight_ih_l0`, `..._l0_reverse`) -> `RNN` params.

    `prefix` is prepended to every key (e.g. "encoder.lstm."); values may be numpy arrays or
    anything `np.asarray` accepts (CPU tensors). Use as `{"params": rnn_params_from_torch(...)}`.
    """
    converters = {"lstm": lstm_params_from_torch, "gru": gru_params_from_torch}
    if cell not in converters:
        raise ValueError(
            f"rnn_params_from_torch cell={cell!r}; expected one of {sorted(converters)}"
        )
    if any(k.startswith(prefix + "weight_hr_l") for k in state_dict):
        raise ValueError("rnn_params_from_torch: LSTM proj_size (weight_hr_l*) is not supported")
    params = {}
    layer = 0
    while prefix + f"weight_ih_l{layer}" in state_dict:
        for suffix in ("", "_reverse"):
            names = [
                f"{p}_l{layer}{suffix}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            if prefix + names[0] not in state_dict:
                continue
            missing = [prefix + n for n in names[:2] if prefix + n not in state_dict]
            if missing:
                raise ValueError(f"rnn_params_from_torch: state_dict lacks {missing}")
            arrays = [state_dict.get(prefix + n) for n in names]
            arrays = [None if a is None else np.asarray(a) for a in arrays]
            params[f"l{layer}{suffix}"] = converters[cell](*arrays)
        layer += 1
    if not params:
        raise ValueError(
            f"rnn_params_from_torch: no key {prefix}weight_ih_l0 in state_dict; "
            f"got {sorted(state_dict)[:8]}"
        )
    return params
