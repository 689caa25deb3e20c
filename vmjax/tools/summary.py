"""Model summary from shapes alone: parameters per top-level module, total, forward FLOPs.

  python -m vmjax.tools.summary --config configs/yt8m.py:lstm
  python -m vmjax.tools.summary --config configs/vivit_k400.py:fe

Any config of configs/ works: classifiers on YT8M features or on decoded videos
(data.format='video_files'), and the models of task='retrieval' and task='audiovisual', each
built and fed as its trainer does. Nothing is materialised: parameters come from
`jax.eval_shape(model.init)` and FLOPs from XLA's cost analysis of the compiled forward pass
on one example.
"""

import math

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags

from vmjax import cli
from vmjax.data import pipeline
from vmjax.data.device import model_inputs
from vmjax.models import build_model

cli.define_config_flag()  # a name (yt8m:lstm) or a file; --config.FIELD=VALUE overrides
flags.mark_flags_as_required(["config"])


def model_and_inputs(config: ml_collections.ConfigDict) -> tuple[nn.Module, dict]:
    """(model, one example's model inputs as ShapeDtypeStructs) as config's trainer builds them."""
    task = config.get("task", "classify")
    if task == "retrieval":
        from vmjax.train import retrieval  # the task modules import only when asked for

        module, length = None, None
        if config.model.text_tower == "minilm":  # the checkpoint's module sizes the tower
            folder, checkpoint = retrieval.minilm_checkpoint(config)
            module = checkpoint.module
            tokenizer = retrieval.MiniLMTokenizer(checkpoint.tokenizer, folder)
            length = tokenizer.length(config.data.max_caption_tokens)
        model = retrieval.build_model(config, module)
        batch = retrieval.example_batch(config, length=length)
    elif task == "audiovisual":
        from vmjax.train import audiovisual

        model = audiovisual.build_model(config)
        batch = audiovisual.model_batch(pipeline.config_example_batch(config.data))
    else:
        model = build_model(config.model, config.data.num_classes)
        batch = pipeline.device_part(pipeline.config_example_batch(config.data))
    inputs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), jax.eval_shape(model_inputs, batch)
    )
    return model, inputs


def summarize(config: ml_collections.ConfigDict, *, flops: bool = True) -> dict:
    """{'modules': {name: params}, 'params': total, 'flops_per_example': float, 'inputs': ...}.

    flops=False skips compiling the forward pass (seconds for the larger models): the counts
    then come from shapes only and 'flops_per_example' is None.
    """
    model, inputs = model_and_inputs(config)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), inputs)
    modules = {
        name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
        for name, tree in variables["params"].items()
    }
    flops_per_example = None
    if flops:
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        cost = forward.lower(variables, inputs).compile().cost_analysis()
        if isinstance(cost, list | tuple):  # older JAX returned one dict per device
            cost = cost[0]
        flops_per_example = cost["flops"]
    return {
        "model": type(model).__name__,
        "inputs": inputs,
        "modules": modules,
        "params": sum(modules.values()),
        "flops_per_example": flops_per_example,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    result = summarize(config)
    shapes = ", ".join(
        f"{k} {list(v.shape)} {v.dtype}" for k, v in sorted(result["inputs"].items())
    )
    print(f"model {config.model.get('name', result['model'])} ({result['model']}; {shapes})")
    width = max([len(n) for n in result["modules"]] + [6])
    for name, count in result["modules"].items():
        print(f"  {name:<{width}}  {count:>14,}")
    print(f"flops_per_example {result['flops_per_example']:.4g}")
    print(f"params {result['params']}")


if __name__ == "__main__":
    cli.run(main)
