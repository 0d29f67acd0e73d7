"""Batch pipelines: one job model, three backends (local process pool, HTCondor DAGMan, Slurm).

A pipeline YAML (:mod:`.pipeline`) names the inputs, the shared storage root, the container image,
the site profile and per-stage options and resources. :mod:`.plan` turns it into tasks — one convert
task per input file, then build, train and analyze (+ export) — and writes what every task needs
into a plan directory (NUL-separated argument files, stage configs), so that no scheduler file ever
carries an input-derived name: the scheduler passes the plan directory and an index, and the same
``jobs/*.sh`` entry point runs on every backend (:mod:`.local`, :mod:`.condor`, :mod:`.slurm`).

The shared storage is the only state (:mod:`.layout`): outputs with completion marks, a status file
per job written by the entry scripts, the training's checkpoint and history. :mod:`.status` reads
them back; :mod:`.collect` gathers the reports.
"""
