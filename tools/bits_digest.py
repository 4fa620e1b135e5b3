"""Digests of ntkflow's results in this environment, to compare two builds bit for bit.

    python tools/bits_digest.py TESTS_DIR > digests.json

Runs every small run of TESTS_DIR/test_simulate_bits.py (each branch of simulate) and a few
calls with several thread counts (the SIMD-lane path, both ntk_gram schedules), and prints
one JSON object: the build (build_info) and a SHA-256 digest per run. Two environments
with the same instruction-set level (set NTKFLOW_ISA) must print the same digests whatever
else differs in their build: tools/serial_bits.sh compares a serial build (no OpenMP)
with the OpenMP one this way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import ntkflow as nf


def _load_simulate_bits(tests: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_simulate_bits",
                                                  tests / "test_simulate_bits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hash(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        assert a is not None  # an unrecorded field would hash an object pointer
        a = np.ascontiguousarray(a)
        assert a.dtype != object
        h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()[:24]


def _threaded() -> dict[str, str]:
    """Calls whose work is split by thread count: the bits must not depend on it."""
    out: dict[str, str] = {}
    net = nf.TwoLayer(width=64, kappa=0.125)
    lanes = nf.GradientFlow(t_max=2.0, solver="rk4", dt=0.05)  # dim 1, fixed steps: lanes
    for threads in (1, 2, 3):
        r = nf.simulate(net, nf.LatentLine(beta=0.7), lanes, trajectories=37, seed=21,
                        threads=threads, record=nf.Record(times=5, params="final"))
        out[f"lanes_threads{threads}"] = _hash(r.loss, r.p, r.ntk, r.u, r.W)
        r = nf.simulate(nf.TwoLayer(width=16, act="relu", kappa=0.25),
                        nf.Dataset(np.linspace(-1, 1, 24).reshape(12, 2), np.ones(12)),
                        nf.GradientFlow(t_max=1.0), trajectories=7, seed=22, threads=threads,
                        record=nf.Record(times=4))
        out[f"relu_dopri5_threads{threads}"] = _hash(r.loss, r.p, r.steps)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(530, 5))  # three row blocks: batch < threads splits one matrix
    u, W = rng.normal(size=(3, 24)), rng.normal(size=(3, 24, 5))
    for threads in (1, 2):
        out[f"gram_one_threads{threads}"] = _hash(
            nf.ntk_gram(u[0], W[0], X, act="erf", kappa=0.2, threads=threads))
        out[f"gram_batch_threads{threads}"] = _hash(
            nf.ntk_gram(u, W, X, act="relu", kappa=0.2, threads=threads))
    p = nf.initial_params(net, nf.Gaussian(1.0, 1.0, correlation=0.4), trajectories=33,
                          seed=23, dim=3)
    out["initial_params"] = _hash(p.u0, p.W0)
    return out


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    warnings.simplefilter("ignore", nf.SerialBuildWarning)  # threads > 1 on a serial build
    bits = _load_simulate_bits(Path(sys.argv[1]))
    digests = {name: hashlib.sha256(json.dumps(bits._digest(run()), sort_keys=True)
                                    .encode()).hexdigest()[:24]
               for name, run in sorted(bits._runs().items())}
    digests.update(_threaded())
    json.dump({"build": nf.build_info(), "numpy": np.__version__, "digests": digests},
              sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
