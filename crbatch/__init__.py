"""crbatch: batch training of the ATLAS CalRatio per-jet classifier on HTCondor and Slurm."""

__version__ = "0.1.0"
