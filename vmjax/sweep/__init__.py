"""Sweeps: one config over a grid of overrides and seeds, run locally or as a SLURM job array.

grid.py    flags -> runs (overrides x seeds) with stable names, checked against the config
runs.py    the sweep directory's layout, DONE/FAILED/RUNNING markers, the per-run wrapper
local.py   parallel processes sized to this machine's cores, GPUs and memory
slurm.py   the job array script, submission, squeue
gather.py  results.json and results.md: mean ± std over seeds per grid cell
cli.py     python -m vmjax.sweep (--help has examples)
"""
