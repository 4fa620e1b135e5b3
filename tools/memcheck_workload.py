"""A short workload for tools/memcheck.sh: every linear method and solver, a threshold
record, the SIMD-lane path for d = 1 (partial and full groups, a diverging lane, and the
per-trajectory path just above the lane width), a diverging gradient descent, relu/tanh/erf
networks with Gram and linearised records, a saturating network that diverges under a
finite loss, and ntk_gram."""

import numpy as np

import ntkflow as nf

for method in ("full", "stagewise", "reduced"):
    for solver in ("rk4", "dopri5"):
        r = nf.simulate(nf.TwoLayer(width=16, kappa=0.3), nf.Moments(Sigma=np.eye(2), b=[1.0, -0.5]),
                        nf.GradientFlow(t_max=2.0, solver=solver, dt=0.05), trajectories=3,
                        record=nf.Record(times=5, loss_below=1e-3), method=method)
for solver in ("rk4", "euler"):
    for width, n in ((37, 11), (4097, 1)):
        nf.simulate(nf.TwoLayer(width=width, kappa=0.2), nf.LatentLine(beta=0.9),
                    nf.GradientFlow(t_max=0.5, solver=solver, dt=0.05), trajectories=n,
                    record=nf.Record(times=3, params="all"))
lanes = nf.simulate(nf.TwoLayer(width=8), nf.LatentLine(), nf.GradientDescent(lr=0.2, steps=200),
                    trajectories=9, init=nf.Gaussian(1.0, 1.0))
p0 = lanes.initial_params()
u0, W0 = p0.u0.copy(), p0.W0.copy()
u0[2] *= 40.0
W0[2] *= 40.0
lanes = nf.simulate(nf.TwoLayer(width=8), nf.LatentLine(), nf.GradientDescent(lr=0.2, steps=200),
                    init=nf.Params(u0, W0))
assert lanes.status[2] == 1, lanes.status
r = nf.simulate(nf.TwoLayer(width=8), nf.LatentLine(), nf.GradientDescent(lr=2.0, steps=300), trajectories=2)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(12, 3)), rng.normal(size=12)
for act in ("relu", "tanh", "erf"):
    r2 = nf.simulate(nf.TwoLayer(width=6, act=act, kappa=0.4), nf.Dataset(X=X, y=y),
                     nf.GradientFlow(t_max=1.0, solver="dopri5"), trajectories=2,
                     record=nf.Record(times=4, gram="train", linearized=True))
sat = nf.simulate(nf.TwoLayer(width=4, act="tanh", kappa=1.0), nf.Dataset(X=X, y=y),
                  nf.GradientDescent(lr=1e3, steps=50), trajectories=2, init=nf.Gaussian(30.0, 30.0),
                  record=nf.Record(times=3, gram="train"))
K = nf.ntk_gram(rng.normal(size=(2, 6)), rng.normal(size=(2, 6, 3)), X, act="relu", kappa=0.4)
print("status", lanes.status, r.status, r2.status, sat.status, K.shape, "ok")
