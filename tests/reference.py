"""A literal, single-run transcription of shared/spec/trainer.md, used only to check the engine."""

import numpy as np

X = np.array([[0, 0, 1, 1], [0, 1, 0, 1]], dtype=float)
Y = np.array([[0, 1, 1, 0]], dtype=float)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def init(h, seed):
    rng = np.random.RandomState(seed)
    return [rng.randn(h, 2), rng.randn(h, 1), rng.randn(1, h), rng.randn(1, 1)]


def forward(params, x):
    w1, b1, w2, b2 = params
    z1 = np.dot(w1, x) + b1
    h = sigmoid(z1)
    z2 = np.dot(w2, h) + b2
    return z1, h, z2, sigmoid(z2)


def loss(yhat, y):
    return -np.sum(y * np.log(yhat) + (1 - y) * np.log(1 - yhat)) / y.shape[1]


def gradients(params, x, y):
    w1, b1, w2, b2 = params
    _, h, _, yhat = forward(params, x)
    m = y.shape[1]
    dz2 = (yhat - y) / m
    dw2 = np.dot(dz2, h.T)
    db2 = np.sum(dz2, axis=1, keepdims=True)
    dh = np.dot(w2.T, dz2)
    dz1 = dh * h * (1 - h)
    dw1 = np.dot(dz1, x.T)
    db1 = np.sum(dz1, axis=1, keepdims=True)
    return [dw1, db1, dw2, db2]


def train(h, seed, lr, iterations):
    params = [np.copy(p) for p in init(h, seed)]
    trace = []
    for e in range(iterations):
        if e % 100 == 0:
            trace.append(loss(forward(params, X)[3], Y))
        for p, g in zip(params, gradients(params, X, Y), strict=True):
            p -= lr * g
    return params, np.array(trace), forward(params, X)[3]
