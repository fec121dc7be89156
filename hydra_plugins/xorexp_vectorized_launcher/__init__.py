"""Hydra launcher ``vectorized``: trains a whole sweep as NumPy batches, then runs each job's usual
Hydra machinery (job dir, .hydra files, callbacks, return value) with its result precomputed."""
