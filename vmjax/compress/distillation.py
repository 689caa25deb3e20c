"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531) for multi-label models.

Our classifiers are multi-label: each class is an independent sigmoid, so the soft targets are
per-class sigmoids of the teacher's temperature-scaled logits (not a softmax over classes):
    q_c  = sigmoid(teacher_logits_c / T)
    loss = alpha * T^2 * sum_c BCE(student_logits_c / T, q_c) + (1 - alpha) * sum_c BCE(s_c, y_c)
per video, then the weighted mean over videos like the label loss. The T^2 factor keeps the
soft term's gradient scale independent of T (Hinton et al., section 2).

The teacher lives in the optimizer state (`hold_teacher`, chained after the optimizer): its
variables are then an argument of the jitted train step, placed and sharded like the rest of
the state and saved with the run's checkpoints so a resumed run needs nothing else, and never
updated (the transformation passes updates through; the step differentiates only the student's
params). The step finds it with `find` and runs its forward pass in the step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class Teacher:
    """A frozen teacher: its variables (arrays) and, as static data, its model and the loss."""

    variables: Any
    model: Any = flax.struct.field(pytree_node=False)
    temperature: float = flax.struct.field(pytree_node=False)
    alpha: float = flax.struct.field(pytree_node=False)

    def logits(self, inputs: dict, cast) -> jax.Array:
        """The teacher's eval-mode logits; `cast` makes the compute copy of its params."""
        variables = dict(self.variables)
        variables["params"] = cast(variables["params"])
        out = self.model.apply(variables, inputs, train=False)
        return jax.lax.stop_gradient(out.astype(jnp.float32))


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    temperature: float,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """(Weighted sum over videos of the loss above, sum of weights), as in weighted_loss."""
    s = student_logits.astype(jnp.float32)
    soft = jax.nn.sigmoid(teacher_logits.astype(jnp.float32) / temperature)
    soft_term = optax.sigmoid_binary_cross_entropy(s / temperature, soft).sum(-1)
    label_term = optax.sigmoid_binary_cross_entropy(s, labels.astype(jnp.float32)).sum(-1)
    per_video = alpha * temperature**2 * soft_term + (1.0 - alpha) * label_term
    return (per_video * weights).sum(), weights.sum()


def hold_teacher(teacher: Teacher) -> optax.GradientTransformation:
    """An identity transformation whose state is `teacher` (see the module docstring)."""

    def init(params):
        del params
        return teacher

    def update(updates, state, params=None):
        del params
        return updates, state

    return optax.GradientTransformation(init, update)


def find(opt_state) -> Teacher | None:
    """The Teacher held in an optimizer state, or None."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, Teacher))
        if isinstance(x, Teacher)
    ]
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} teachers; expected one")
    return found[0] if found else None


def load_teacher(config: ml_collections.ConfigDict) -> Teacher:
    """The teacher of `config.compress.teacher_workdir`: its model and its latest checkpoint."""
    from vmjax import trained

    c = config.compress
    if not c.teacher_workdir:
        raise ValueError("config.compress.method='distill' needs config.compress.teacher_workdir")
    if c.temperature <= 0 or not 0.0 <= c.alpha <= 1.0:
        raise ValueError(
            f"config.compress: temperature={c.temperature}, alpha={c.alpha}; expected "
            "temperature > 0 and 0 <= alpha <= 1"
        )
    teacher = trained.load(c.teacher_workdir)
    where = f"{teacher.run.workdir} (the teacher)"
    if teacher.config.data.num_classes != config.data.num_classes:
        raise ValueError(
            f"{where}: data.num_classes={teacher.config.data.num_classes}; the student has "
            f"{config.data.num_classes}"
        )
    if teacher.config.data.level != config.data.level:
        raise ValueError(
            f"{where}: data.level={teacher.config.data.level!r}; the student reads "
            f"{config.data.level!r} data and the teacher sees the student's batches"
        )
    return Teacher(teacher.variables, teacher.model, float(c.temperature), float(c.alpha))


@flax.struct.dataclass
class TeacherSlot:
    """Where a Teacher sits in an optimizer state, in what a checkpoint holds: the teacher is
    another run's, loaded from its own run directory, so checkpoints never carry it."""


def _is_teacher(x) -> bool:
    return isinstance(x, Teacher | TeacherSlot)


def without_teacher(opt_state):
    """`opt_state` with its Teacher (if any) replaced by an empty TeacherSlot."""
    return jax.tree.map(
        lambda x: TeacherSlot() if isinstance(x, Teacher) else x, opt_state, is_leaf=_is_teacher
    )


def with_teacher(opt_state, teacher: Teacher):
    """`opt_state` (as `without_teacher` left it) with `teacher` back in its slot."""
    return jax.tree.map(
        lambda x: teacher if isinstance(x, TeacherSlot) else x, opt_state, is_leaf=_is_teacher
    )
