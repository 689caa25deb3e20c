"""Model compression, each method a config of the normal trainer (vmjax.compress).

  python -m vmjax.main --config configs/compress.py:prune --workdir DIR      # 90% sparse kernels
  python -m vmjax.main --config configs/compress.py:qat --workdir DIR        # int8-aware training
  python -m vmjax.main --config configs/compress.py:ptq --workdir DIR \\
      --config.compress.source_workdir=FLOAT_RUN                             # int8 of a trained run
  python -m vmjax.main --config configs/compress.py:distill --workdir DIR \\
      --config.compress.teacher_workdir=TEACHER_RUN                          # logistic student

Exactly one method preset; add `smoke` for a tiny CPU run and any configs/yt8m.py model preset
to pick the model (`configs/compress.py:prune,frame,smoke`). Everything else, and every field's
meaning, is configs/yt8m.py's; `benchmarks/compression.py` runs them all against one teacher.
"""

import ml_collections

# An absolute import: this file works as vmjax.configs.compress and when loaded by path.
from vmjax.configs import yt8m

METHOD_PRESETS = ("prune", "ptq", "qat", "distill")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(METHOD_PRESETS) - set(yt8m.PRESETS))
    if unknown:
        raise ValueError(
            f"unknown preset(s) {unknown}; choose one of {METHOD_PRESETS}, optionally with "
            f"{yt8m.PRESETS}"
        )
    methods = [p for p in presets if p in METHOD_PRESETS]
    if len(methods) != 1:
        raise ValueError(
            f"choose exactly one compression preset of {METHOD_PRESETS}, got {methods}"
        )
    (method,) = methods
    rest = [p for p in presets if p not in METHOD_PRESETS]
    if method == "distill" and not any(p in yt8m.MODEL_PRESETS or p == "frame" for p in rest):
        rest.append("logistic")  # the student: the teacher's default MoE without the experts
    c = yt8m.get_config(",".join(rest))
    c.compress.method = method
    if method == "prune":
        # The schedule follows num_train_steps (also when overridden): prune from 1/6 to 2/3 of
        # training in 12 steps, then fine-tune at the final sparsity.
        steps = c.get_ref("num_train_steps")
        c.compress.begin_step = steps // 6
        c.compress.end_step = steps * 2 // 3
        c.compress.update_every = steps // 24
    return c
