"""Hydra sweeper ``xorexp_grid``: Hydra's basic grid sweeper, minus its second composition of every
job when the vectorized launcher (which composes and checks every job before any runs) launches."""
