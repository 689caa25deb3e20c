"""Model summary from shapes alone: parameters per top-level module, total, forward FLOPs.

  python -m vmjax.tools.summary --config configs/yt8m.py:lstm

Nothing is materialised: parameters come from `jax.eval_shape(model.init)` and FLOPs from
XLA's cost analysis of the compiled forward pass on one example.
"""

import math

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from vmjax.data import pipeline
from vmjax.models import build_model
from vmjax.train.step import model_inputs

config_flags.DEFINE_config_file(
    "config", None, "A config file (e.g. configs/yt8m.py:lstm); --config.FIELD=VALUE overrides."
)
flags.mark_flags_as_required(["config"])


def summarize(config: ml_collections.ConfigDict) -> dict:
    """{'modules': {name: params}, 'params': total, 'flops_per_example': float}."""
    spec = pipeline.BatchSpec.from_config(config.data)
    model = build_model(config.model, spec.num_classes)
    inputs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.eval_shape(model_inputs, pipeline.device_part(pipeline.example_batch(spec))),
    )
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), inputs)
    modules = {
        name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
        for name, tree in variables["params"].items()
    }
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    cost = forward.lower(variables, inputs).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX returned one dict per device
        cost = cost[0]
    return {"modules": modules, "params": sum(modules.values()), "flops_per_example": cost["flops"]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    result = summarize(config)
    width = max([len(n) for n in result["modules"]] + [6])
    print(f"model {config.model.name} (data.level={config.data.level})")
    for name, count in result["modules"].items():
        print(f"  {name:<{width}}  {count:>14,}")
    print(f"flops_per_example {result['flops_per_example']:.4g}")
    print(f"params {result['params']}")


if __name__ == "__main__":
    app.run(main)
