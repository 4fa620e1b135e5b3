"""Write teacher_student.npz, the dataset of examples/relu_width_study.toml.

    python examples/data/make_teacher_student.py          # rewrites the file beside it

A relu teacher with 4 units on inputs in d = 5, ``y = sum_k a_k relu(v_k . x)`` with unit
directions v_k and signs a_k = +1, -1, +1, -1; 64 training inputs whose targets carry
small noise (standard deviation 0.01) and 256 noise-free test inputs, so that the test
loss measures the distance to the teacher. Inputs have independent coordinates of mean 0
and variance 1/d (|x| about 1). Arrays: X (64, 5), y (64,), X_test (256, 5),
y_test (256,), all float64, as ``[data] file`` reads them.

Only operations IEEE 754 rounds exactly (uniform draws, +, -, *, /, sqrt, max, in a
fixed order: no BLAS, no exp or log) so the arrays are the same bits on every machine;
tests/test_cli.py checks the committed file against this script.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

SEED = 16  # issue 16, which asked for an example on a dataset file
DIM, UNITS, TRAIN, TEST, NOISE = 5, 4, 64, 256, 0.01
OUT = Path(__file__).resolve().with_name("teacher_student.npz")


def uniform(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Uniform on [-std sqrt 3, std sqrt 3] (mean 0, standard deviation ``std``), from
    ``rng.random``: a PCG64 word as a double, exact (normal draws take exp and log)."""
    return (2.0 * rng.random(shape) - 1.0) * (std * math.sqrt(3.0))


def dot(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """X @ v summed coordinate by coordinate in order (a BLAS may sum in another order,
    or fuse multiply and add, depending on the CPU)."""
    out = X[:, 0] * v[0]
    for j in range(1, v.size):
        out = out + X[:, j] * v[j]
    return out


def make() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    V = uniform(rng, (UNITS, DIM), 1.0)
    V = V / np.sqrt(np.array([dot(v[None, :], v)[0] for v in V]))[:, None]  # unit rows
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    X = uniform(rng, (TRAIN, DIM), 1.0 / math.sqrt(DIM))
    X_test = uniform(rng, (TEST, DIM), 1.0 / math.sqrt(DIM))

    def teacher(X: np.ndarray) -> np.ndarray:
        y = np.zeros(X.shape[0])
        for a, v in zip(signs, V, strict=True):
            y = y + a * np.maximum(dot(X, v), 0.0)
        return y

    y = teacher(X) + uniform(rng, (TRAIN,), NOISE)
    return {"X": X, "y": y, "X_test": X_test, "y_test": teacher(X_test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.name} here")
    out = parser.parse_args().out
    np.savez(out, **make())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
