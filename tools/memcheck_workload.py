"""A short workload for tools/memcheck.sh: every linear method and solver, a threshold
record, a diverging gradient descent, relu/tanh/erf networks with Gram and linearised
records, and ntk_gram."""

import numpy as np, ntkflow as nf
for method in ("full", "stagewise", "reduced"):
    for solver in ("rk4", "dopri5"):
        r = nf.simulate(nf.TwoLayer(width=16, kappa=0.3), nf.Moments(Sigma=np.eye(2), b=[1.0, -0.5]),
                        nf.GradientFlow(t_max=2.0, solver=solver, dt=0.05), trajectories=3,
                        record=nf.Record(times=5, loss_below=1e-3), method=method)
r = nf.simulate(nf.TwoLayer(width=8), nf.LatentLine(), nf.GradientDescent(lr=2.0, steps=300), trajectories=2)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(12, 3)), rng.normal(size=12)
for act in ("relu", "tanh", "erf"):
    r2 = nf.simulate(nf.TwoLayer(width=6, act=act, kappa=0.4), nf.Dataset(X=X, y=y),
                     nf.GradientFlow(t_max=1.0, solver="dopri5"), trajectories=2,
                     record=nf.Record(times=4, gram="train", linearized=True))
K = nf.ntk_gram(rng.normal(size=(2, 6)), rng.normal(size=(2, 6, 3)), X, act="relu", kappa=0.4)
print("status", r.status, r2.status, K.shape, "ok")
