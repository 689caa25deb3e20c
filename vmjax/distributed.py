"""Joining a multi-process JAX run: from explicit coordinator settings or the cluster's env.

Must run before anything touches a JAX backend (jax.devices(), any computation).
"""

from __future__ import annotations

import os


def cluster_environment() -> str | None:
    """The multi-process cluster JAX can initialise itself from, if this is one."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return "SLURM"
    if len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return "Cloud TPU slice"
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> str | None:
    """jax.distributed.initialize() from the arguments, else from a detected cluster.

    Returns how it joined ('explicit', 'SLURM', 'Cloud TPU slice') or None (one process).
    """
    import jax

    if coordinator_address is not None:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return "explicit"
    cluster = cluster_environment()
    if cluster:
        jax.distributed.initialize()  # JAX reads the cluster's environment
    return cluster
