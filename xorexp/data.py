"""The XOR problem: four samples as columns, as in the reference spec."""

import numpy as np

X = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])  # (2, 4): inputs, one sample per column
Y = np.array([[0.0, 1.0, 1.0, 0.0]])  # (1, 4): targets
N_SAMPLES = X.shape[1]

X.setflags(write=False)
Y.setflags(write=False)
