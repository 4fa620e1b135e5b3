"""A short workload for tools/memcheck.sh: every linear method and solver, a threshold
record, and a diverging gradient descent."""

import numpy as np, ntkflow as nf
for method in ("full", "stagewise", "reduced"):
    for solver in ("rk4", "dopri5"):
        r = nf.simulate(nf.TwoLayer(width=16, kappa=0.3), nf.Moments(Sigma=np.eye(2), b=[1.0, -0.5]),
                        nf.GradientFlow(t_max=2.0, solver=solver, dt=0.05), trajectories=3,
                        record=nf.Record(times=5, loss_below=1e-3), method=method)
r = nf.simulate(nf.TwoLayer(width=8), nf.LatentLine(), nf.GradientDescent(lr=2.0, steps=300), trajectories=2)
print("status", r.status, "ok")
