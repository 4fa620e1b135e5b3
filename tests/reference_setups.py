"""Independent references for the training setups of issue #15: vector outputs, biases,
logistic and softmax losses, weight decay, minibatch SGD and label noise.

Written from the math of the issue's plan (docs/theory.md notation), not from the core:

- the Philox4x32-10 generator in plain Python integers (exact 32/64/128-bit arithmetic),
  Box-Muller through Python's ``math`` (the C library's log/sqrt/cos/sin, as the core),
  the initial-parameter layout, the SGD stream and its batch and label-noise draws;
- the network ``F = kappa act(Xa W^T) U`` (Xa = [X, 1] with a bias), its losses and
  gradients, the flow field with weight decay, gradient descent, SGD and a SciPy flow;
- SGD's linearised twin, trained in parameter space on the same batches;
- the NTK Gram with c outputs as an explicit Jacobian, and a finite-difference Jacobian.

Conventions: U (m, c), W (m, D) with the bias as W's last column when there is one
(D = d + 1), X (n, D) already augmented (``augment``), Y (n, c) targets (one-hot rows for
classes, +-1 for logistic). Float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.special
from scipy.integrate import solve_ivp

from .reference import act_and_slope

# ------------------------------------------------------------------ Philox4x32-10 (exact)

MASK32 = 0xFFFFFFFF
TWO_POW_M53 = 1.0 / 9007199254740992.0  # 2^-53, exact
TWO_PI = 6.283185307179586  # the core's literal
SGD_KEY_XOR = 0x53474431  # "SGD1": the SGD stream's key is the seed's low word xor this
NOISE_BLOCK = 2**31  # label-noise normals 2b, 2b + 1 come from SGD block 2^31 + b


def philox_block(key: tuple[int, int], counter: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Philox4x32-10 (Salmon et al. SC'11): the four 32-bit output words of one counter.

    Ten rounds of two 32x32 -> 64-bit products; the key is bumped by the Weyl constants
    after every round."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def box_muller(c: tuple[int, ...]) -> tuple[float, float]:
    """Two standard normals from one block: u1 in (0, 1] from words (c0, c1), u2 in [0, 1)
    from (c2, c3), each the top 53 bits of a 64-bit word (Philox::normal_pair)."""
    a = (c[0] << 32) | c[1]
    b = (c[2] << 32) | c[3]
    u1 = float((a >> 11) + 1) * TWO_POW_M53
    u2 = float(b >> 11) * TWO_POW_M53
    r = math.sqrt(-2.0 * math.log(u1))
    phi = TWO_PI * u2
    return r * math.cos(phi), r * math.sin(phi)


def stream_block(seed: int, stream: int, block: int) -> tuple[int, ...]:
    """Block ``block`` of the initialisation stream (key = seed, stream = trajectory)."""
    key = (seed & MASK32, seed >> 32)
    return philox_block(key, (block & MASK32, block >> 32, stream & MASK32, stream >> 32))


def normals(seed: int, stream: int, first: int, count: int) -> np.ndarray:
    """Normals [first, first + count) of a stream: normal q is element q % 2 of the
    Box-Muller pair of block q // 2 (so any sub-range gives the same numbers)."""
    out = np.empty(count)
    pair: tuple[float, float] | None = None
    for i, q in enumerate(range(first, first + count)):
        if pair is None or q % 2 == 0:
            pair = box_muller(stream_block(seed, stream, q >> 1))
        out[i] = pair[q & 1]
    return out


def initial_params(seed: int, trajectory: int, m: int, d: int, s_u: float = 1.0,
                   s_w: float = 1.0, c: int = 1, bias: bool = False, s_b: float = 0.0):
    """The plan's Gaussian initialisation (correlation 0) of one trajectory (global index):
    normals [0, mc) -> U (m, c) * s_u; [mc, mc + md) -> W (m, d) * s_w/sqrt(d);
    with bias [mc + md, mc + md + m) -> b (m,) * s_b. Returns U (m, c), W (m, d), b or None.
    For c = 1 and no bias this is today's layout."""
    z = normals(seed, trajectory, 0, m * c + m * d + (m if bias else 0))
    U = s_u * z[: m * c].reshape(m, c)
    W = (s_w / math.sqrt(d)) * z[m * c: m * c + m * d].reshape(m, d)
    b = s_b * z[m * c + m * d:] if bias else None
    return U, W, b


def check_initial_params(p, seed: int, s_u: float, s_w: float, first_trajectory: int = 0) -> None:
    """Assert that Params ``p`` (u0 (k, m), W0 (k, m, d), c = 1, no bias) are, bit for bit,
    this module's draws for trajectories first_trajectory + t."""
    k, m, d = p.W0.shape
    for t in range(k):
        U, W, _ = initial_params(seed, first_trajectory + t, m, d, s_u, s_w)
        np.testing.assert_array_equal(p.u0[t], U[:, 0], err_msg=f"u0 of trajectory {t}")
        np.testing.assert_array_equal(p.W0[t], W, err_msg=f"W0 of trajectory {t}")


# ------------------------------------------------------------------ the SGD stream


def sgd_block(seed: int, trajectory: int, step: int, j: int) -> tuple[int, ...]:
    """Block j of step ``step``: key (lo32(seed) ^ "SGD1", hi32(seed)), counter
    [j, step, lo32(trajectory), hi32(trajectory)]."""
    assert 0 <= j <= MASK32 and 0 <= step <= MASK32
    key = ((seed & MASK32) ^ SGD_KEY_XOR, seed >> 32)
    return philox_block(key, (j, step, trajectory & MASK32, trajectory >> 32))


def sgd_words(seed: int, trajectory: int, step: int, count: int) -> list[int]:
    """64-bit words 0..count-1 of a step: word t from block t // 2, (c0 << 32 | c1) for even
    t and (c2 << 32 | c3) for odd t."""
    out = []
    for t in range(count):
        c = sgd_block(seed, trajectory, step, t // 2)
        out.append((c[0] << 32 | c[1]) if t % 2 == 0 else (c[2] << 32 | c[3]))
    return out


def sgd_batch(seed: int, trajectory: int, step: int, n: int, batch: int,
              replace: bool = False) -> np.ndarray:
    """The sample indices of one SGD step, int64 (batch,).

    Without replacement: a partial Fisher-Yates shuffle of [0, n) (identity at every step),
    position t swapped with t + floor(v_t (n - t) / 2^64); with replacement:
    floor(v_t n / 2^64). The products are exact 128-bit (Python integers); the permutation
    is a dict of moved entries, so n may be huge."""
    assert 1 <= batch <= n or replace
    v = sgd_words(seed, trajectory, step, batch)
    if replace:
        return np.array([(vt * n) >> 64 for vt in v], dtype=np.int64)
    perm: dict[int, int] = {}
    out = []
    for t, vt in enumerate(v):
        r = t + ((vt * (n - t)) >> 64)
        perm[t], perm[r] = perm.get(r, r), perm.get(t, t)
        out.append(perm[t])
    return np.array(out, dtype=np.int64)


def sgd_noise(seed: int, trajectory: int, step: int, count: int) -> np.ndarray:
    """Label-noise normals 0..count-1 of a step: normals 2b, 2b + 1 are Box-Muller of SGD
    block 2^31 + b (same transform as the initialisation stream)."""
    out = np.empty(count)
    for q in range(count):
        out[q] = box_muller(sgd_block(seed, trajectory, step, NOISE_BLOCK + q // 2))[q % 2]
    return out


# ------------------------------------------------------------------ network and losses


@dataclass(frozen=True)
class Setup:
    """What fixes the objective and the field: activation, output scale, loss,
    per-layer learning rates and weight decays."""

    act: str = "linear"
    kappa: float = 1.0
    loss: str = "square"
    eta_u: float = 1.0
    eta_w: float = 1.0
    lambda_u: float = 0.0
    lambda_w: float = 0.0


def augment(X: np.ndarray, bias: bool) -> np.ndarray:
    """Inputs as the network sees them: [X, 1] with a bias, else X."""
    return np.hstack([X, np.ones((X.shape[0], 1))]) if bias else np.asarray(X, float)


def one_hot(labels, c: int) -> np.ndarray:
    """Rows e_{label} (n, c)."""
    Y = np.zeros((len(labels), c))
    Y[np.arange(len(labels)), np.asarray(labels, dtype=int)] = 1.0
    return Y


def forward(U, W, X, act, kappa):
    """F = kappa act(X W^T) U (n, c), with H = act(Z) and S = act'(Z), Z = X W^T (n, m)."""
    H, S = act_and_slope(act, X @ W.T)
    return kappa * H @ U, H, S


def sample_losses(F, Y, loss):
    """Per-sample losses l_j (n,) and dl/dF (n, c), numerically stable for any |F|.

    square 1/2 ||f - y||^2; logistic (c = 1, y = +-1) softplus(-y f); softmax
    logsumexp(f) - y . f for y on the simplex."""
    if loss == "square":
        R = F - Y
        return 0.5 * np.sum(R * R, axis=1), R
    if loss == "logistic":
        assert F.shape[1] == 1
        yf = Y * F
        return np.logaddexp(0.0, -yf)[:, 0], -Y * scipy.special.expit(-yf)
    if loss == "softmax":
        lse = scipy.special.logsumexp(F, axis=1)
        return lse - np.sum(Y * F, axis=1), scipy.special.softmax(F, axis=1) - Y
    raise ValueError(loss)


def loss_value(U, W, X, Y, s: Setup) -> float:
    """L = (1/n) sum_j l_j: the recorded loss (no decay term)."""
    return float(np.mean(sample_losses(forward(U, W, X, s.act, s.kappa)[0], Y, s.loss)[0]))


def loss_and_grads(U, W, X, Y, s: Setup):
    """L and the gradients of the data term by the chain rule: dL/dU_ia = kappa/n sum_j
    h_ji g_ja, dL/dW_ik = kappa/n sum_j s_ji (g_j . U_i) x_jk (g = dl/df)."""
    n = X.shape[0]
    F, H, S = forward(U, W, X, s.act, s.kappa)
    losses, G = sample_losses(F, Y, s.loss)
    gU = s.kappa / n * np.einsum("ji,ja->ia", H, G)
    gW = s.kappa / n * np.einsum("ji,ja,ia,jk->ik", S, G, U, X)
    return float(np.mean(losses)), gU, gW


def field(U, W, X, Y, s: Setup):
    """Flow field with decay: dU/dt = -eta_u (dL/dU + lambda_u U), same for W."""
    _, gU, gW = loss_and_grads(U, W, X, Y, s)
    return -s.eta_u * (gU + s.lambda_u * U), -s.eta_w * (gW + s.lambda_w * W)


def classification_error(F, Y, loss):
    """Fraction misclassified: c = 1 sign(f) != y (f = 0 is an error); c >= 2 argmax."""
    if F.shape[1] == 1:
        return float(np.mean(~(np.sign(F[:, 0]) == Y[:, 0])))
    return float(np.mean(np.argmax(F, axis=1) != np.argmax(Y, axis=1)))


# ------------------------------------------------------------------ training runs


def _record(out, U, W, X, Y, s):
    out["U"].append(U.copy())
    out["W"].append(W.copy())
    out["loss"].append(loss_value(U, W, X, Y, s))


def _finish(out):
    return {k: np.array(v) for k, v in out.items()}


def gd_run(U0, W0, X, Y, s: Setup, lr: float, steps: int, record=None):
    """Full-batch descent theta -= lr * eta * (gradient + decay). Returns dict of arrays
    U (T, m, c), W (T, m, D), loss (T,) at the record steps (default 0..steps)."""
    record = range(steps + 1) if record is None else [int(t) for t in record]
    U, W = np.array(U0, float), np.array(W0, float)
    out = {"U": [], "W": [], "loss": []}
    for step in range(steps + 1):
        if step in record:
            _record(out, U, W, X, Y, s)
        if step < steps:
            dU, dW = field(U, W, X, Y, s)
            U, W = U + lr * dU, W + lr * dW
    return _finish(out)


def sgd_run(U0, W0, X, Y, s: Setup, lr: float, steps: int, *, seed: int, trajectory: int,
            batch: int, replace: bool = False, label_noise: float = 0.0, record=None):
    """Minibatch SGD as the plan: step k (0-based) uses rows sgd_batch(seed, trajectory, k)
    with targets Y[idx_t, a] + sigma xi_(t c + a), and descends the batch loss
    (1/B) sum_t l(idx_t) plus decay. Records the full-data, noise-free loss."""
    record = range(steps + 1) if record is None else [int(t) for t in record]
    n, c = Y.shape
    U, W = np.array(U0, float), np.array(W0, float)
    out = {"U": [], "W": [], "loss": []}
    for step in range(steps + 1):
        if step in record:
            _record(out, U, W, X, Y, s)
        if step == steps:
            break
        idx = sgd_batch(seed, trajectory, step, n, batch, replace)
        Yb = Y[idx]
        if label_noise:
            Yb = Yb + label_noise * sgd_noise(seed, trajectory, step, batch * c).reshape(batch, c)
        dU, dW = field(U, W, X[idx], Yb, s)
        U, W = U + lr * dU, W + lr * dW
    return _finish(out)


def sgd_twin_run(U0, W0, X, Y, s: Setup, lr: float, steps: int, *, seed: int,
                 trajectory: int, batch: int, replace: bool = False, label_noise: float = 0.0,
                 record=None, X_test=None):
    """The linearised twin of ``sgd_run``, in parameter space: the network linearised at
    theta_0 = (U0, W0), f_lin(x) = f_0(x) + J_0(x) (theta - theta_0), trained on the same
    batches and noisy targets, theta -= lr eta J_0[B]^T (f_lin,B - y~_B) / |B| (no weight
    decay: the twin is the kernel-regime run of the data loss, docs/theory.md §0). J_0 is
    the explicit Jacobian of ``jacobian``. Returns f (T, n, c) and, with X_test, f_test
    (T, n_test, c): the twin's outputs at the record steps (default 0..steps)."""
    record = range(steps + 1) if record is None else [int(t) for t in record]
    n, c = Y.shape
    m, D = np.shape(W0)
    J = jacobian(U0, W0, X, s.act, s.kappa)
    eta = lr_weights(m, c, D, s.eta_u, s.eta_w)
    f0 = forward(U0, W0, X, s.act, s.kappa)[0].ravel()
    test = X_test is not None
    if test:
        Jt = jacobian(U0, W0, X_test, s.act, s.kappa)
        ft0 = forward(U0, W0, X_test, s.act, s.kappa)[0].ravel()
    delta = np.zeros(J.shape[1])
    out = {"f": [], **({"f_test": []} if test else {})}
    for step in range(steps + 1):
        if step in record:
            out["f"].append((f0 + J @ delta).reshape(n, c))
            if test:
                out["f_test"].append((ft0 + Jt @ delta).reshape(-1, c))
        if step == steps:
            break
        idx = sgd_batch(seed, trajectory, step, n, batch, replace)
        Yb = Y[idx]
        if label_noise:
            Yb = Yb + label_noise * sgd_noise(seed, trajectory, step, batch * c).reshape(batch, c)
        rows = (idx[:, None] * c + np.arange(c)).ravel()  # (j, a) -> j c + a, as jacobian
        Rb = (f0 + J @ delta)[rows] - Yb.ravel()
        delta = delta - lr * eta * (J[rows].T @ Rb) / batch
    return _finish(out)


def flow_solve(U0, W0, X, Y, s: Setup, times, rtol=1e-12, atol=1e-14):
    """The flow by SciPy's DOP853 at ``times``: dict U (T, m, c), W (T, m, D), loss (T,)."""
    m, c = np.shape(U0)
    D = np.shape(W0)[1]

    def rhs(_t, y):
        dU, dW = field(y[: m * c].reshape(m, c), y[m * c:].reshape(m, D), X, Y, s)
        return np.concatenate([dU.ravel(), dW.ravel()])

    y0 = np.concatenate([np.ravel(U0), np.ravel(W0)])
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times,
                    rtol=rtol, atol=atol)
    assert sol.success, sol.message
    Us, Ws = sol.y[: m * c].T.reshape(-1, m, c), sol.y[m * c:].T.reshape(-1, m, D)
    loss = np.array([loss_value(u, w, X, Y, s) for u, w in zip(Us, Ws, strict=True)])
    return {"U": Us, "W": Ws, "loss": loss}


def first_crossing(U0, W0, X, Y, s: Setup, t_max: float) -> float:
    """First time a pre-activation x_j . w_i of the flow reaches 0 (t_max if none does).

    Before it a relu network's field is smooth, so ``flow_solve`` keeps its accuracy there;
    across a kink DOP853 loses its order, and on a sliding surface it chatters."""
    m, c = np.shape(U0)
    D = np.shape(W0)[1]
    sign = np.sign(X @ np.asarray(W0).T)

    def rhs(_t, y):
        dU, dW = field(y[: m * c].reshape(m, c), y[m * c:].reshape(m, D), X, Y, s)
        return np.concatenate([dU.ravel(), dW.ravel()])

    def margin(_t, y):  # min over pairs of z_ji times its initial sign: 0 at a crossing
        return float(np.min(sign * (X @ y[m * c:].reshape(m, D).T)))

    margin.terminal = True
    y0 = np.concatenate([np.ravel(U0), np.ravel(W0)])
    sol = solve_ivp(rhs, (0.0, t_max), y0, method="DOP853", events=margin, rtol=1e-10,
                    atol=1e-12)
    return float(sol.t_events[0][0]) if sol.t_events[0].size else t_max


def deltas(U, W, s: Setup):
    """Per-neuron delta_i = eta_w ||U_i||^2 - eta_u ||w_i||^2 (w_i with its bias), (..., m)."""
    return s.eta_w * np.sum(U * U, axis=-1) - s.eta_u * np.sum(W * W, axis=-1)


def reduced_linear_flow(p0, M0, a0, Sigma, b, kappa, s: Setup, times, rtol=1e-12,
                        atol=1e-14):
    """The linear network's reduced system with decay (c = 1), g = kappa (kappa Sigma p - b):
    dp = -eta_w (a g + lw p) - eta_u (M g + lu p), dM = -eta_w (g p^T + p g^T + 2 lw M),
    da = -2 eta_u (p . g + lu a). Returns p (T, d), M (T, d, d), a (T,)."""
    d = len(p0)
    lu, lw = s.lambda_u, s.lambda_w

    def rhs(_t, y):
        p, M, a = y[:d], y[d:d + d * d].reshape(d, d), y[-1]
        g = kappa * (kappa * Sigma @ p - b)
        dp = -s.eta_w * (a * g + lw * p) - s.eta_u * (M @ g + lu * p)
        dM = -s.eta_w * (np.outer(g, p) + np.outer(p, g) + 2 * lw * M)
        da = -2 * s.eta_u * (p @ g + lu * a)
        return np.concatenate([dp, dM.ravel(), [da]])

    y0 = np.concatenate([p0, np.ravel(M0), [a0]])
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times,
                    rtol=rtol, atol=atol)
    assert sol.success, sol.message
    return sol.y[:d].T, sol.y[d:d + d * d].T.reshape(-1, d, d), sol.y[-1]


# ------------------------------------------------------------------ NTK with c outputs


def jacobian(U, W, X, act, kappa):
    """dF/dtheta (n c, m c + m D): rows (j, a) -> j c + a, columns vec(U) then vec(W),
    both row-major. dF_ja/dU_ib = kappa h_ji [a = b]; dF_ja/dW_ik = kappa U_ia s_ji x_jk."""
    n, (m, c), D = X.shape[0], U.shape, W.shape[1]
    _, H, S = forward(U, W, X, act, kappa)
    JU = kappa * np.einsum("ji,ab->jaib", H, np.eye(c)).reshape(n * c, m * c)
    JW = kappa * np.einsum("ia,ji,jk->jaik", U, S, X).reshape(n * c, m * D)
    return np.hstack([JU, JW])


def fd_jacobian(U, W, X, act, kappa, h=1e-6):
    """Central finite differences of F (n c,) in every parameter, same layout as
    ``jacobian``; error O(h^2) + O(eps/h) (relu: only away from its kink)."""
    m, c = U.shape
    theta = np.concatenate([U.ravel(), W.ravel()])

    def f(th):
        return forward(th[: m * c].reshape(m, c), th[m * c:].reshape(W.shape), X, act,
                       kappa)[0].ravel()

    J = np.empty((X.shape[0] * c, theta.size))
    for q in range(theta.size):
        e = np.zeros_like(theta)
        e[q] = h
        J[:, q] = (f(theta + e) - f(theta - e)) / (2 * h)
    return J


def lr_weights(m, c, D, eta_u, eta_w):
    """The learning-rate vector of the parameters in ``jacobian``'s column order."""
    return np.concatenate([np.full(m * c, eta_u), np.full(m * D, eta_w)])


def gram(J, eta):
    """K = J diag(eta) J^T (n c, n c)."""
    return (J * eta) @ J.T


def ntk_gram(U, W, X, act, kappa, eta_u=1.0, eta_w=1.0):
    """The learning-rate-weighted Gram of the c-output network from its Jacobian."""
    m, c = U.shape
    return gram(jacobian(U, W, X, act, kappa), lr_weights(m, c, W.shape[1], eta_u, eta_w))
