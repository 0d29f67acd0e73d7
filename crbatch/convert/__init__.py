"""Converters: DiVertAnalysis ntuples and reference pickles → HDF5 shards (one job per file)."""
