"""xorexp's Hydra sweeper on Optuna >= 4 (ask/tell): ``hydra/sweeper=xorexp_optuna``."""
