"""ntk_gram(): NTK Gram matrices of given parameters, computed by the compiled core."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _core, _memory
from ._simulate import core_network
from ._validate import array, integer, real, require
from .specs import ACTIVATIONS


def _inputs(value: Any, name: str, dim: int) -> NDArray[np.float64]:
    X = array(value, name, ndim=(1, 2), copy=False)
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    require(X.shape[0] >= 1, name, "must have at least one input", X)
    require(X.shape[1] == dim, name, f"must have shape (inputs, {dim}) to match W's dim", X)
    return X


def ntk_gram(
    u: Any,
    W: Any,
    X: Any,
    *,
    act: str,
    kappa: float,
    eta_u: float = 1.0,
    eta_w: float = 1.0,
    X2: Any = None,
    threads: int | None = None,
    b: Any = None,
) -> NDArray[np.float64]:
    """The learning-rate-weighted NTK Gram matrix of one network or a batch
    (docs/theory.md §C.1).

    ``K(x, x') = kappa^2 [eta_u sum_i act(w_i.x) act(w_i.x')
    + eta_w (x.x') sum_i u_i^2 act'(w_i.x) act'(w_i.x')]``, so that gradient flow moves the
    function by ``df(x)/dt = -(1/n) sum_j K(x, x_j) (f(x_j) - y_j)``; ``eta_u = eta_w = 1``
    gives the plain NTK. Computed by matrix products, never from a per-parameter Jacobian.

    With c outputs (``u`` of shape (..., width, c)) the kernel is over (input, output)
    pairs, row ``j c + a`` for input j and output a (docs/theory.md §I.2):
    ``K[(j,a),(k,b)] = kappa^2 [eta_u delta_ab h_j.h_k + eta_w (x_j.x_k) sum_i s_ji s_ki
    U_ia U_ib]``.

    Parameters
    ----------
    u : array (..., width) or (..., width, outputs)
        Output weights; any leading batch dimensions, e.g. ``Result.u`` of shape
        (trajectories, times, width) from ``Record(params="all")``. One more axis than
        ``W`` minus one means several outputs.
    W : array (..., width, dim)
        Input weights with the same leading dimensions.
    X : array (samples, dim)
        Inputs (a 1-d array is read as dim = 1).
    act : {"linear", "relu", "tanh", "erf"}
    kappa : float
        Output scale, > 0.
    eta_u, eta_w : float
        Layer learning rates weighting the kernel, >= 0.
    X2 : array (samples2, dim), optional
        Second set of inputs: the cross Gram ``K(X, X2)``.
    threads : int, optional
        OpenMP threads (default all). Bits do not depend on it.
    b : array (..., width), optional
        First-layer biases (``Result.b``): the kernel of the inputs ``(x, 1)`` with
        ``(w_i, b_i)`` as weights.

    Returns
    -------
    array (..., samples c, samples c) or (..., samples c, samples2 c)
        c = 1 for one output. Exactly symmetric when ``X2`` is None.
    """
    require(act in ACTIVATIONS, "act", f"must be one of {ACTIVATIONS}", act)
    kappa = real(kappa, "kappa", low=0.0, low_open=True)
    eta_u = real(eta_u, "eta_u", low=0.0)
    eta_w = real(eta_w, "eta_w", low=0.0)
    n_threads = 0 if threads is None else _core.team(integer(threads, "threads", minimum=1))
    require(np.ndim(u) >= 1, "u", "must have shape (..., width[, outputs])", u)
    require(np.ndim(W) >= 2, "W", "must have shape (..., width, dim)", W)
    # No copies of the parameters (batches of wide networks are large): the core only
    # reads them, during this call.
    WW = array(W, "W", ndim=int(np.ndim(W)), copy=False)
    multi = np.ndim(u) == WW.ndim
    uu = array(u, "u", ndim=(WW.ndim - 1, WW.ndim), copy=False)
    c = int(uu.shape[-1]) if multi else 1
    lead_u = uu.shape[:-1] if multi else uu.shape
    require(WW.shape[:-1] == lead_u, "W",
            f"must have shape {lead_u + ('dim',)} to match u".replace("'", ""), WW)
    width, dim = int(WW.shape[-2]), int(WW.shape[-1])
    require(width >= 1 and dim >= 1 and c >= 1, "W", "must have width >= 1 and dim >= 1", WW)
    X1 = _inputs(X, "X", dim)
    Xb = None if X2 is None else _inputs(X2, "X2", dim)
    if b is not None:  # the bias is a weight on a constant input 1
        bb = array(b, "b", ndim=WW.ndim - 1)
        require(bb.shape == WW.shape[:-1], "b",
                f"must have shape {WW.shape[:-1]} to match W", bb)
        WW = np.concatenate([WW, bb[..., None]], axis=-1)
        X1 = np.concatenate([X1, np.ones((X1.shape[0], 1))], axis=1)
        Xb = None if Xb is None else np.concatenate([Xb, np.ones((Xb.shape[0], 1))], axis=1)
        dim += 1
    n1 = int(X1.shape[0])
    n2 = n1 if Xb is None else int(Xb.shape[0])
    lead = WW.shape[:-2]
    batch = int(np.prod(lead, dtype=np.int64)) if lead else 1
    cnet = core_network(width, dim, act, kappa, eta_u, eta_w, c)
    need = 8.0 * batch * n1 * n2 * c * c + float(
        _core.gram_workspace_bytes(cnet, batch, n1, n2 if Xb is not None else 0, n_threads))
    _memory.check(need, f"ntk_gram ({batch} networks x {n1 * c} x {n2 * c} Gram matrices)",
                  "pass fewer networks or inputs at once")
    if batch == 0:
        return np.empty(lead + (n1 * c, n2 * c))
    out: NDArray[np.float64] = _core.ntk_gram(
        cnet, np.ascontiguousarray(uu).reshape(batch, width * c),
        np.ascontiguousarray(WW).reshape(batch, width, dim), batch, X1, Xb,
        threads=n_threads)
    return out.reshape(lead + (n1 * c, n2 * c))
