"""One process of a multi-process contrastive run (tests/train/test_contrastive_runs.py).

python -m tests.train.contrastive_worker TASKS PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Joins jax.distributed on localhost (with several processes); for each of the comma-separated
TASKS ('retrieval', 'audiovisual') builds that trainer's Task (vmjax.train.contrastive) and runs
STEPS train steps on one fixed global batch, each process feeding only the rows its devices
hold; then embeds the batch and gathers its ids as the evaluation does. Process 0 writes the
losses, the final parameters and the embeddings to OUT_DIR/TASK.npz. One process pair serves
every task: starting processes and joining them costs more than a task's tiny steps.
"""

import os
import sys

import numpy as np

STEPS, BATCH = 3, 8


def global_batch(config, task: str) -> dict:
    from vmjax.data import pipeline

    batch = pipeline.example_batch(pipeline.BatchSpec.from_config(config.data), BATCH)
    rng = np.random.default_rng(0)
    if task == "retrieval":
        length = config.data.max_caption_tokens
        tokens = rng.integers(1, config.data.caption_vocab_size, (BATCH, length), np.int32)
        mask = np.arange(length)[None] < rng.integers(1, length + 1, BATCH)[:, None]
        batch["caption_tokens"], batch["caption_mask"] = np.where(mask, tokens, 0), mask
    batch["ids"] = np.array([f"v{i}" for i in range(BATCH)], object)
    for key in ("rgb", "audio"):
        x = batch[key]
        if x.dtype == np.uint8:
            batch[key] = rng.integers(0, 256, x.shape, dtype=np.uint8)
        else:
            batch[key] = rng.normal(size=x.shape).astype(x.dtype)
    lengths = rng.integers(4, batch["mask"].shape[1] + 1, BATCH)
    batch["mask"] = np.arange(batch["mask"].shape[1])[None] < lengths[:, None]
    batch["weights"] = np.ones(BATCH, np.float32)
    batch["weights"][-1] = 0.0  # a padding row: no pair's negative
    return batch


def setup(task: str):
    """(config, Placement) of a tiny `task` run; no data is read: the batch is made here."""
    from tests.train import test_audiovisual, test_retrieval_training
    from vmjax.train import audiovisual, retrieval

    if task == "retrieval":
        config = test_retrieval_training.get_config("/nonexistent")
        trainer = retrieval
    else:
        config = test_audiovisual.get_config("", "/nonexistent")
        trainer = audiovisual
    config.batch_size = BATCH
    config.optimizer.warmup_steps = 0
    trainer.check_config(config)  # several processes are allowed
    return config, trainer.setup(config)[2]


def main(tasks: str, process_id: int, num_processes: int, port: str, out_dir: str) -> None:
    import jax

    if num_processes > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)
    for task in tasks.split(","):
        run(task, process_id, num_processes, os.path.join(out_dir, f"{task}.npz"))
    if num_processes > 1:
        jax.distributed.shutdown()


def run(task: str, process_id: int, num_processes: int, out: str) -> None:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vmjax.train import contrastive, parallel, retrieval

    config, place_ = setup(task)
    trainer = contrastive.task(place_, config, evaluate=None, log_eval=None, desc="worker")
    # This process's rows: those its devices hold of the batch-sharded global array.
    sharding = NamedSharding(place_.mesh, P(parallel.BATCH_AXES))
    rows = sorted(
        {
            r
            for index in sharding.addressable_devices_indices_map((BATCH,)).values()
            for r in range(BATCH)[index[0]]
        }
    )
    batch = {k: v[rows] for k, v in global_batch(config, task).items()}
    state, losses = trainer.state, []
    for step in range(STEPS):
        state, metrics = trainer.train_step(state, batch, step)
        losses.append(float(metrics["loss"]))
    # The evaluation's pieces: every process gets the global batch's embeddings and ids.
    embedded = place_.embed(state.params, batch)
    ids = retrieval.gather_ids(batch["ids"])
    assert ids.tolist() == [f"v{i}" for i in range(BATCH)], ids
    # A process whose eval share ran out joins the others' steps with empty batches.
    mine = [batch] * (2 if process_id == 0 else 1)
    joined = list(retrieval._in_step(iter(mine)))
    assert len(joined) == (2 if num_processes > 1 else len(mine)), len(joined)
    if process_id == 1:
        assert joined[1]["weights"].sum() == 0 and set(joined[1]["ids"]) == {""}
        assert joined[1]["rgb"].shape == batch["rgb"].shape
    params = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    if process_id == 0:
        arrays = {jax.tree_util.keystr(path): np.asarray(x) for path, x in params}
        arrays |= {f"embedded/{k}": np.asarray(v) for k, v in embedded.items()}
        np.savez(out, losses=np.asarray(losses), rows=np.asarray(rows), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
