"""LSTM/GRU cells and the masked runner against the gate equations written out in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmjax.models.rnn import (
    RNN,
    GRUCell,
    LSTMCell,
    gru_params_from_torch,
    lstm_params_from_torch,
    rnn_params_from_torch,
)

B, T, D, H = 4, 6, 7, 5
GATES = {"lstm": "ifgo", "gru": "rzn"}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# The references take per-gate matrices, oriented as in the equations (W_ii: [H, in], so
# W_ii x is `x @ W_ii.T`), with separate input and hidden biases like PyTorch.


def _np_lstm_step(g: dict, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple:
    """PyTorch's LSTM equations in float64."""
    i = _sigmoid(x @ g["W_ii"].T + g["b_ii"] + h @ g["W_hi"].T + g["b_hi"])
    f = _sigmoid(x @ g["W_if"].T + g["b_if"] + h @ g["W_hf"].T + g["b_hf"])
    gg = np.tanh(x @ g["W_ig"].T + g["b_ig"] + h @ g["W_hg"].T + g["b_hg"])
    o = _sigmoid(x @ g["W_io"].T + g["b_io"] + h @ g["W_ho"].T + g["b_ho"])
    c = f * c + i * gg
    return o * np.tanh(c), c


def _np_gru_step(g: dict, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """PyTorch's GRU equations in float64."""
    r = _sigmoid(x @ g["W_ir"].T + g["b_ir"] + h @ g["W_hr"].T + g["b_hr"])
    z = _sigmoid(x @ g["W_iz"].T + g["b_iz"] + h @ g["W_hz"].T + g["b_hz"])
    n = np.tanh(x @ g["W_in"].T + g["b_in"] + r * (h @ g["W_hn"].T + g["b_hn"]))
    return (1 - z) * n + z * h


def _np_run(cell: str, g: dict, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs one sequence `xs: [time, in]` from zero state; returns (hs [time, H], last h)."""
    hidden = g[f"W_h{GATES[cell][0]}"].shape[0]
    h = np.zeros(hidden)
    c = np.zeros_like(h)
    hs = []
    for x in xs:
        if cell == "lstm":
            h, c = _np_lstm_step(g, x, h, c)
        else:
            h = _np_gru_step(g, x, h)
        hs.append(h)
    return np.array(hs).reshape(len(xs), hidden), h


def _gates_from_ours(cell: str, p: dict) -> dict:
    """Per-gate matrices read from our layout: gate k is column block k of each kernel."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    hidden = p["recurrent_kernel"].shape[0]
    g = {}
    for k, gate in enumerate(GATES[cell]):
        cols = slice(k * hidden, (k + 1) * hidden)
        g[f"W_i{gate}"] = p["input_kernel"][:, cols].T
        g[f"W_h{gate}"] = p["recurrent_kernel"][:, cols].T
        if cell == "lstm":
            g[f"b_i{gate}"], g[f"b_h{gate}"] = p["bias"][cols], 0.0
        else:
            g[f"b_i{gate}"], g[f"b_h{gate}"] = p["input_bias"][cols], p["recurrent_bias"][cols]
    return g


def _gates_from_torch(cell: str, w_ih, w_hh, b_ih, b_hh) -> dict:
    """Per-gate matrices read from PyTorch's layout: gate k is row block k (W_ii = w_ih[0:H])."""
    hidden = w_hh.shape[1]
    g = {}
    for k, gate in enumerate(GATES[cell]):
        rows = slice(k * hidden, (k + 1) * hidden)
        g[f"W_i{gate}"], g[f"W_h{gate}"] = w_ih[rows], w_hh[rows]
        g[f"b_i{gate}"], g[f"b_h{gate}"] = b_ih[rows], b_hh[rows]
    return g


def _np_rnn(cell: str, layer_gates: dict, x: np.ndarray, lengths: np.ndarray, layers: int):
    """Each sequence's valid frames, layer by layer; backward = the valid frames reversed."""
    x = np.asarray(x, np.float64)
    outputs = np.zeros(x.shape[:2] + (0,))
    finals = np.zeros((x.shape[0], 0))
    inputs = x
    for layer in range(layers):
        names = [n for n in (f"l{layer}", f"l{layer}_reverse") if n in layer_gates]
        outputs = np.zeros(x.shape[:2] + (H * len(names),))
        finals = np.zeros((x.shape[0], H * len(names)))
        for b, n in enumerate(lengths):
            for d, name in enumerate(names):
                frames = inputs[b, :n] if d == 0 else inputs[b, :n][::-1]
                hs, last = _np_run(cell, layer_gates[name], frames)
                if n:
                    outputs[b, :n, d * H : (d + 1) * H] = hs if d == 0 else hs[::-1]
                    finals[b, d * H : (d + 1) * H] = last
        inputs = outputs
    return outputs, finals


def _random_like(tree: dict, seed: int, scale: float = 0.5) -> dict:
    """Replaces every param (biases included) with N(0, scale^2) so every term shows up."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), tree)


def _frames(seed: int, lengths: list[int], time: int = T, dim: int = D):
    """Random frames with the given valid lengths; padded frames hold garbage."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), time, dim)).astype(np.float32)
    mask = np.arange(time)[None, :] < np.array(lengths)[:, None]
    x[~mask] = 1e6
    return x, mask


def _init_rnn(model: RNN, x: np.ndarray, mask: np.ndarray, seed: int) -> dict:
    # Only the shapes are needed, and eval_shape skips compiling the initialisers.
    shapes = jax.eval_shape(model.init, jax.random.key(seed), x, mask)["params"]
    return _random_like(shapes, seed)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_matches_equations(cell):
    module = LSTMCell(H) if cell == "lstm" else GRUCell(H)
    xs = np.random.default_rng(0).normal(size=(4, B, D)).astype(np.float32)
    carry = module.initialize_carry(B)
    params = _random_like(module.init(jax.random.key(0), carry, xs[0])["params"], 1)
    g = _gates_from_ours(cell, params)
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    for x in xs:
        carry, out = module.apply({"params": params}, carry, x)
        if cell == "lstm":
            h, c = _np_lstm_step(g, x.astype(np.float64), h, c)
            np.testing.assert_allclose(carry[1], c, atol=1e-5)
        else:
            h = _np_gru_step(g, x.astype(np.float64), h)
        np.testing.assert_allclose(out, h, atol=1e-5)
    assert np.abs(h).max() > 0.1  # the steps did something worth comparing


def test_param_layout_and_init():
    lstm = LSTMCell(H).init(jax.random.key(0), LSTMCell(H).initialize_carry(B), np.ones((B, D)))
    p = lstm["params"]
    assert p["input_kernel"].shape == (D, 4 * H) and p["recurrent_kernel"].shape == (H, 4 * H)
    np.testing.assert_array_equal(p["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], H))
    for k in range(4):
        block = np.asarray(p["recurrent_kernel"][:, k * H : (k + 1) * H])
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    gru = GRUCell(H).init(jax.random.key(0), GRUCell(H).initialize_carry(B), np.ones((B, D)))
    assert {k: v.shape for k, v in gru["params"].items()} == {
        "input_kernel": (D, 3 * H),
        "input_bias": (3 * H,),
        "recurrent_kernel": (H, 3 * H),
        "recurrent_bias": (3 * H,),
    }


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_runner_matches_per_sequence_loop(cell, bidirectional):
    lengths = np.array([T, 3, 1, 0])
    x, mask = _frames(2, list(lengths))
    # Unrolling must not change the result; covering it here costs no extra compile.
    model = RNN(H, cell, num_layers=2, bidirectional=bidirectional, unroll=1 + bidirectional)
    params = _init_rnn(model, x, mask, 3)
    outputs, final_h = jax.jit(model.apply)({"params": params}, x, mask)
    dirs = 2 if bidirectional else 1
    assert outputs.shape == (B, T, dirs * H) and final_h.shape == (B, dirs * H)
    gates = {name: _gates_from_ours(cell, p) for name, p in params.items()}
    want_outputs, want_final = _np_rnn(cell, gates, x, lengths, layers=2)
    np.testing.assert_allclose(outputs, want_outputs, atol=2e-5)
    np.testing.assert_allclose(final_h, want_final, atol=2e-5)
    # The backward direction really differs from the forward one on a multi-frame row.
    if bidirectional:
        assert np.abs(want_final[1, :H] - want_final[1, H:]).max() > 1e-2


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_appended_padding_changes_nothing(cell):
    lengths = [T, 4, 2, 0]
    x, mask = _frames(4, lengths)
    x_long, mask_long = _frames(4, lengths, time=T + 3)
    x_long[:, :T] = x
    model = RNN(hidden_size=H, cell=cell, bidirectional=True)
    params = _init_rnn(model, x, mask, 5)
    outputs, final_h = jax.jit(model.apply)({"params": params}, x, mask)
    outputs_long, final_long = jax.jit(model.apply)({"params": params}, x_long, mask_long)
    np.testing.assert_allclose(outputs_long[:, :T], outputs, atol=1e-6)
    np.testing.assert_allclose(final_long, final_h, atol=1e-6)
    assert np.all(np.asarray(outputs_long)[~mask_long] == 0)
    # The 0-frame row: zeros everywhere, no NaN.
    assert np.all(np.asarray(outputs_long[3]) == 0) and np.all(np.asarray(final_long[3]) == 0)


def test_return_sequences_false():
    lengths = np.array([T, 2, 5, 1])
    x, mask = _frames(6, list(lengths))
    model = RNN(hidden_size=H, cell="gru", num_layers=2, return_sequences=False)
    params = _init_rnn(model, x, mask, 7)
    outputs, final_h = jax.jit(model.apply)({"params": params}, x, mask)
    assert outputs is None
    gates = {name: _gates_from_ours("gru", p) for name, p in params.items()}
    np.testing.assert_allclose(final_h, _np_rnn("gru", gates, x, lengths, layers=2)[1], atol=2e-5)


def _torch_layer(rng: np.random.Generator, num_gates: int, in_size: int) -> list[np.ndarray]:
    """weight_ih [G*H, in], weight_hh [G*H, H], bias_ih [G*H], bias_hh [G*H] as nn.LSTM/GRU."""
    shapes = [(num_gates * H, in_size), (num_gates * H, H), (num_gates * H,), (num_gates * H,)]
    return [(0.5 * rng.normal(size=s)).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_converter_matches_torch_equations(cell):
    rng = np.random.default_rng(8)
    arrays = _torch_layer(rng, 4 if cell == "lstm" else 3, D)
    module = LSTMCell(H) if cell == "lstm" else GRUCell(H)
    convert = lstm_params_from_torch if cell == "lstm" else gru_params_from_torch
    params = convert(*arrays)
    g = _gates_from_torch(cell, *[a.astype(np.float64) for a in arrays])
    carry = module.initialize_carry(B)
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    for x in rng.normal(size=(4, B, D)).astype(np.float32):
        carry, out = module.apply({"params": params}, carry, x)
        if cell == "lstm":
            h, c = _np_lstm_step(g, x.astype(np.float64), h, c)
            np.testing.assert_allclose(carry[1], c, atol=1e-5)
        else:
            h = _np_gru_step(g, x.astype(np.float64), h)
        np.testing.assert_allclose(out, h, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_state_dict_to_bidirectional_rnn(cell):
    rng = np.random.default_rng(9)
    num_gates = 4 if cell == "lstm" else 3
    state_dict, gates = {}, {}
    for layer, in_size in ((0, D), (1, 2 * H)):
        for suffix in ("", "_reverse"):
            arrays = _torch_layer(rng, num_gates, in_size)
            for name, a in zip(
                ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays, strict=True
            ):
                state_dict[f"rnn.{name}_l{layer}{suffix}"] = a
            gates[f"l{layer}{suffix}"] = _gates_from_torch(cell, *[a.astype(float) for a in arrays])
    params = rnn_params_from_torch(state_dict, cell, prefix="rnn.")
    lengths = np.array([T, 5, 2, 0])
    x, mask = _frames(10, list(lengths))
    model = RNN(hidden_size=H, cell=cell, num_layers=2, bidirectional=True)
    init = jax.eval_shape(model.init, jax.random.key(0), x, mask)["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, init)
    outputs, final_h = jax.jit(model.apply)({"params": params}, x, mask)
    want_outputs, want_final = _np_rnn(cell, gates, x, lengths, layers=2)
    np.testing.assert_allclose(outputs, want_outputs, atol=2e-5)
    np.testing.assert_allclose(final_h, want_final, atol=2e-5)


def test_torch_converter_rejects_wrong_shapes():
    w_ih, w_hh, b_ih, b_hh = _torch_layer(np.random.default_rng(0), 3, D)
    with pytest.raises(ValueError, match="lstm_params_from_torch.*weight_hh"):
        lstm_params_from_torch(w_ih, w_hh, b_ih, b_hh)  # GRU arrays: 3H rows, not 4H
    with pytest.raises(ValueError, match="weight_ih_l0"):
        rnn_params_from_torch({"weight_ih_l1": w_ih}, "gru")


def _jnp_rnn_loss(cell: str, params: dict, x: jax.Array, lengths: tuple[int, ...]) -> jax.Array:
    """The loss below from unhoisted cell calls on each sequence's valid frames (plain autodiff)."""
    module = LSTMCell(H) if cell == "lstm" else GRUCell(H)
    inputs = [x[b, :n] for b, n in enumerate(lengths)]
    total = 0.0
    for layer in range(2):
        outputs = []
        for b, frames in enumerate(inputs):
            halves = []
            for name, order in ((f"l{layer}", 1), (f"l{layer}_reverse", -1)):
                carry, hs = module.initialize_carry(1), []
                for frame in frames[::order]:
                    carry, h = module.apply({"params": params[name]}, carry, frame[None])
                    hs.append(h[0])
                if layer == 1:
                    total += jnp.sum(jnp.sin(module.hidden(carry)))
                halves.append(jnp.stack(hs[::order]) if hs else jnp.zeros((0, H)))
            outputs.append(jnp.concatenate(halves, axis=-1))
            if layer == 1:
                total += jnp.sum(outputs[b] ** 2)
        inputs = outputs
    return total


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_match_plain_autodiff(cell):
    lengths = [4, 2, 0]  # few frames keep the unrolled reference quick to compile
    x, mask = _frames(13, lengths, time=4)
    x[~mask] = np.nan  # even NaN in padded frames must not reach the gradients
    model = RNN(hidden_size=H, cell=cell, num_layers=2, bidirectional=True)
    params = _init_rnn(model, np.zeros_like(x), mask, 14)

    def loss(params, x):
        outputs, final_h = model.apply({"params": params}, x, mask)
        return jnp.sum(outputs**2) + jnp.sum(jnp.sin(final_h))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    reference = jax.jit(jax.grad(_jnp_rnn_loss, argnums=(1, 2)), static_argnums=(0, 3))
    want = reference(cell, params, jnp.asarray(x), tuple(lengths))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), grads, want)
    for leaf in jax.tree.leaves(grads[0]):
        assert np.abs(leaf).max() > 0
    grad_x = np.asarray(grads[1])
    assert np.all(grad_x[~mask] == 0) and np.abs(grad_x[mask]).min() > 0
