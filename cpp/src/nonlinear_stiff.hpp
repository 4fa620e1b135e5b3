// Two-layer networks with a smooth activation (linear, tanh, erf) on a dataset in the stiff
// (lazy) regime: the linear algebra Rodas4 needs, W = c I - J_F with J_F the exact
// Jacobian of the gradient-flow field, and the stiffness estimate of the hand-over from
// dopri5 (private header).
//
// With theta = (U, W), the field F = -Eta (grad L + Lambda theta) and L = (1/n) sum_j l(f_j)
// of the outputs f = kappa act(X W^T) U (n x c):
//   J_F = -Eta (J_f^T H J_f + D + Lambda),
// J_f the (n c) x P Jacobian of the outputs (row (j, a): the gradient of f_ja), H the loss
// Hessian in output space (per sample a c x c block l''(f_j) / n; square loss: I / n), and D
// the residual-weighted second derivatives of the outputs, block-diagonal per neuron since
// f is a sum over neurons: with R = dl/dF (n x c) and q = c + d,
//   D_i[U_b, w_i] = (kappa/n) sum_j R_jb act'(z_ji) x_j,
//   D_i[w_i, w_i] = (kappa/n) sum_j (R_j . U_i) act''(z_ji) x_j x_j^T,  D_i[U, U] = 0.
// So W = B + (Eta J_f^T) H J_f with B = c I + Eta (D + Lambda) block-diagonal (m blocks of
// q x q, LU each), and Woodbury with the (n c) x (n c) capacitance K = I + H J_f B^-1 Eta J_f^T
// (singular H, as softmax's, is fine in this form):
//   W^-1 r = s - B^-1 Eta J_f^T K^-1 H J_f s,   s = B^-1 r.
// J_f and J_f^T act through the same matrix products as the gradient (never a P-sized
// matrix); only K is formed, from chunks of neurons: O(m (n d^2 + q^3 + q^2 n c) + (n c)^2 m q)
// per factorisation, O(n m d + (n c)^2) per solve, (n c)^2 doubles.
//
// Everything factor() computes lives in this class's own buffers: the field evaluations
// Rodas4 makes between factor() and its solves must not move the Jacobian's point (the
// linear path lost two orders of accuracy to exactly that).
#pragma once

#include <Eigen/Core>
#include <Eigen/LU>
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "gemm.hpp"
#include "integrate.hpp"
#include "ntkflow/core.hpp"
#include "ntkflow/nonlinear.hpp"

namespace ntkflow::detail {

/// Largest n c for which the stiff solver forms its capacitance matrix ((n c)^2 doubles
/// per thread, and an O((n c)^2 m q) product per step): beyond it auto stays dopri5 and
/// rodas4 is refused.
constexpr Index kStiffMaxRows = 4096;

/// Power iterations per estimate of the stiffness rate, and accepted dopri5 steps between
/// estimates (the others reuse the last one). Warm-started, a single iteration converges
/// over the steps the switch waits for (15); three per call switched at the same steps on
/// the test problems, at three times the cost. An estimate costs about a field evaluation
/// and a half: every step it slowed non-stiff tanh runs under auto by 20%, every 4th by
/// about 5%, and hands a stiff run over at most 4 steps later.
constexpr int kRateIterations = 1;
constexpr int kRateEvery = 4;

class NetworkStiff {
 public:
  // Memory: (n c)^2 + 4 n m + m (c + d)^2 + 2 (n c) (chunk (c + d)) doubles and change,
  // counted before a run by _stiff_workspace_bytes in python/ntkflow/_simulate.py.
  NetworkStiff(const Network& net, const double* x, const double* y, Index n)
      : net_(net), x_(x), y_(y), n_(n), m_(net.width), d_(net.dim), c_(net.outputs),
        q_(net.outputs + net.dim), N_(n * net.outputs), nb_(chunk(net)),
        u0_(static_cast<std::size_t>(m_ * c_)), a_(static_cast<std::size_t>(n_ * m_)),
        s_(a_.size()), s2_(a_.size()), t_(a_.size()), f_(static_cast<std::size_t>(N_)),
        hb_(static_cast<std::size_t>(N_ * c_)), blk_(static_cast<std::size_t>(m_ * q_ * q_)),
        piv_(static_cast<std::size_t>(m_ * q_)), jc_(static_cast<std::size_t>(N_ * nb_ * q_)),
        gc_(jc_.size()), sv_(static_cast<std::size_t>(m_ * q_)), tv_(sv_.size()),
        v_(N_), z_(N_), pv_(N_), hc_(static_cast<std::size_t>(c_)), K_(N_, N_) {
    gemm_.reserve(n_, m_, d_);       // Z = X W^T, X s_W^T
    gemm_.reserve(n_, c_, m_);       // F = A U, J_f s
    gemm_.reserve(m_, c_, n_);       // A^T z
    gemm_.reserve(n_, m_, c_);       // z U^T
    gemm_.reserve(m_, d_, n_);       // (S o z U^T)^T X
    gemm_.reserve(N_, N_, nb_ * q_);  // the capacitance, chunk by chunk
    reset();
  }

  /// The power iteration of rate() starts afresh with each trajectory (its bits must not
  /// depend on the trajectories a thread ran before).
  void reset() { pv_.setOnes(); }

  /// Outputs F = kappa act(X W^T) U at y into the buffer returned (n x c), with act, act'
  /// and (second) act'' kept; the caller turns F into R = dl/dF in place.
  double* forward(const double* y, bool second) {
    std::copy(y, y + m_ * c_, u0_.begin());
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(n_, m_, d_, x_, d_, y + m_ * c_, d_, a_.data(),
                                                m_, 1.0, false);
    const Index len = n_ * m_;
    switch (net_.act) {
      case Activation::tanh:
        for (Index k = 0; k < len; ++k) {
          const double t = std::tanh(a_[k]);
          s_[k] = 1.0 - t * t;
          if (second) s2_[k] = -2.0 * t * s_[k];
          a_[k] = t;
        }
        break;
      case Activation::erf:
        for (Index k = 0; k < len; ++k) {
          const double z = a_[k];
          s_[k] = 1.1283791670955126 * std::exp(-z * z);
          if (second) s2_[k] = -2.0 * z * s_[k];
          a_[k] = std::erf(z);
        }
        break;
      default:  // linear (relu never comes here: its field is piecewise)
        std::fill(s_.begin(), s_.end(), 1.0);
        if (second) std::fill(s2_.begin(), s2_.end(), 0.0);
        break;
    }
    gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(n_, c_, m_, a_.data(), m_, u0_.data(), c_,
                                                f_.data(), c_, net_.kappa, false);
    return f_.data();
  }

  /// W = cc I - J_F at the point of the last forward(y, true), R = dl/dF in its buffer.
  /// False when W is singular or not finite there.
  bool factor(double cc) {
    hessian_blocks();
    const double eu = net_.eta_u, ew = net_.eta_w, kn = net_.kappa / static_cast<double>(n_);
    // B_i = cc I + Eta (D_i + Lambda), row-major q x q per neuron.
    std::fill(blk_.begin(), blk_.end(), 0.0);
    const bool curved = net_.act != Activation::linear;
    for (Index i = 0; i < m_; ++i) {
      double* B = blk_.data() + i * q_ * q_;
      for (Index j = 0; j < n_; ++j) {
        const double* x = x_ + j * d_;
        const double* r = f_.data() + j * c_;
        const double sk = kn * s_[j * m_ + i];
        for (Index b = 0; b < c_; ++b) {
          const double w = sk * r[b];
          double* row = B + b * q_ + c_;
          for (Index k = 0; k < d_; ++k) row[k] += w * x[k];
        }
        if (!curved) continue;
        double e = 0.0;
        for (Index a = 0; a < c_; ++a) e += r[a] * u0_[i * c_ + a];
        const double w = kn * e * s2_[j * m_ + i];
        if (w == 0.0) continue;
        for (Index k = 0; k < d_; ++k) {
          double* row = B + (c_ + k) * q_ + c_;
          const double wx = w * x[k];
          for (Index l = k; l < d_; ++l) row[l] += wx * x[l];
        }
      }
      for (Index r = 0; r < q_; ++r)  // mirror the U-w and the upper w-w parts
        for (Index s = 0; s < r; ++s)
          if (r >= c_) B[r * q_ + s] = B[s * q_ + r];
      for (Index r = 0; r < q_; ++r) {
        const double eta = r < c_ ? eu : ew;
        const double lam = r < c_ ? net_.lambda_u : net_.lambda_w;
        for (Index s = 0; s < q_; ++s) B[r * q_ + s] *= eta;
        B[r * q_ + r] += cc + eta * lam;
      }
      if (!lu_small(B, piv_.data() + i * q_)) return false;
    }
    // M1 = J_f B^-1 Eta J_f^T, nb_ neurons at a time: J_c (N x nb q) and
    // G_c = B^-1 Eta J_c^T (nb q x N), M1 += J_c G_c.
    K_.setZero();
    for (Index i0 = 0; i0 < m_; i0 += nb_) {
      const Index nb = std::min(nb_, m_ - i0), w = nb * q_;
      for (Index j = 0; j < n_; ++j)
        for (Index a = 0; a < c_; ++a) {
          double* row = jc_.data() + (j * c_ + a) * w;
          const double* x = x_ + j * d_;
          for (Index il = 0; il < nb; ++il) {
            const Index i = i0 + il;
            double* blk = row + il * q_;
            for (Index b = 0; b < c_; ++b) blk[b] = 0.0;
            blk[a] = net_.kappa * a_[j * m_ + i];
            const double g = net_.kappa * u0_[i * c_ + a] * s_[j * m_ + i];
            for (Index k = 0; k < d_; ++k) blk[c_ + k] = g * x[k];
          }
        }
      for (Index col = 0; col < w; ++col) {
        const double eta = col % q_ < c_ ? eu : ew;
        double* g = gc_.data() + col * N_;
        for (Index rr = 0; rr < N_; ++rr) g[rr] = eta * jc_[rr * w + col];
      }
      for (Index il = 0; il < nb; ++il)
        lu_solve_rows(blk_.data() + (i0 + il) * q_ * q_, piv_.data() + (i0 + il) * q_,
                      gc_.data() + il * q_ * N_, N_);
      gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(N_, N_, w, jc_.data(), w, gc_.data(), N_,
                                                  K_.data(), N_, 1.0, true);
    }
    // K = I + H M1, H block-diagonal per sample (rows (j, .) mix among themselves).
    for (Index j = 0; j < n_; ++j) {
      const double* h = hb_.data() + j * c_ * c_;
      if (c_ == 1) {
        K_.row(j) *= h[0];
      } else {
        for (Index col = 0; col < N_; ++col) {
          for (Index a = 0; a < c_; ++a) {
            double acc = 0.0;
            for (Index b = 0; b < c_; ++b) acc += h[a * c_ + b] * K_(j * c_ + b, col);
            hc_[a] = acc;
          }
          for (Index a = 0; a < c_; ++a) K_(j * c_ + a, col) = hc_[a];
        }
      }
    }
    K_.diagonal().array() += 1.0;
    if (!K_.allFinite()) return false;
    if (lu_)
      lu_->compute(K_);
    else
      lu_.emplace(K_);  // once per thread: it holds K_ and factors it in place
    const double rc = lu_->rcond();
    return std::isfinite(rc) && rc > 1e-14;
  }

  /// r <- W^-1 r (state layout: U (m x c) then W (m x d), row-major).
  void solve(double* r) {
    for (Index i = 0; i < m_; ++i) {
      double* s = sv_.data() + i * q_;
      std::copy(r + i * c_, r + (i + 1) * c_, s);
      std::copy(r + m_ * c_ + i * d_, r + m_ * c_ + (i + 1) * d_, s + c_);
      lu_apply(blk_.data() + i * q_ * q_, piv_.data() + i * q_, s);
    }
    jf(sv_.data(), v_.data());
    apply_h(v_.data());
    z_ = lu_->solve(v_);
    eta_jft(z_.data(), tv_.data());
    for (Index i = 0; i < m_; ++i) {
      double* t = tv_.data() + i * q_;
      lu_apply(blk_.data() + i * q_ * q_, piv_.data() + i * q_, t);
      const double* s = sv_.data() + i * q_;
      for (Index a = 0; a < c_; ++a) r[i * c_ + a] = s[a] - t[a];
      for (Index k = 0; k < d_; ++k) r[m_ * c_ + i * d_ + k] = s[c_ + k] - t[c_ + k];
    }
  }

  /// The largest eigenvalue of H J_f Eta J_f^T (the Gauss-Newton part of -J_F, whose
  /// non-zero spectrum it shares) at the point of the last forward(y, false), R in its
  /// buffer: kRateIterations power iterations, warm-started from the last vector (the
  /// kernel moves slowly between steps), so a lower bound that tightens as the run goes.
  /// Shares its buffers with factor(): for the explicit phase only.
  double rate() {
    hessian_blocks();
    double lam = 0.0;
    for (int it = 0; it < kRateIterations; ++it) {
      eta_jft(pv_.data(), tv_.data());
      jf(tv_.data(), v_.data());
      apply_h(v_.data());
      const double nk = v_.norm(), nv = pv_.norm();
      if (!(nk > 0) || !std::isfinite(nk)) {
        pv_.setOnes();
        return std::isfinite(nk) ? 0.0 : kInf;
      }
      pv_ = v_ / nk;
      lam = nk / nv;
    }
    return lam;
  }

 private:
  static Index chunk(const Network& net) {
    const Index q = net.outputs + net.dim;
    return std::max<Index>(1, std::min<Index>(net.width, 256 / q));
  }

  /// Per-sample loss Hessians l''(f_j) / n (c x c) from R = dl/dF and the targets.
  void hessian_blocks() {
    const double inv = 1.0 / static_cast<double>(n_);
    std::fill(hb_.begin(), hb_.end(), 0.0);
    for (Index j = 0; j < n_; ++j) {
      double* h = hb_.data() + j * c_ * c_;
      const double* r = f_.data() + j * c_;
      const double* y = y_ + j * c_;
      switch (net_.loss) {
        case Loss::square:
          for (Index a = 0; a < c_; ++a) h[a * c_ + a] = inv;
          break;
        case Loss::logistic: {  // R = -y sigmoid(-y f), y = +-1: l'' = s (1 - s)
          const double s = -r[0] * y[0];
          h[0] = s * (1.0 - s) * inv;
          break;
        }
        case Loss::softmax:  // R = p - y: l'' = diag(p) - p p^T
          for (Index a = 0; a < c_; ++a) {
            const double pa = r[a] + y[a];
            for (Index b = 0; b < c_; ++b) h[a * c_ + b] = -pa * (r[b] + y[b]) * inv;
            h[a * c_ + a] += pa * inv;
          }
          break;
      }
    }
  }

  /// v <- H v (n c).
  void apply_h(double* v) {
    for (Index j = 0; j < n_; ++j) {
      const double* h = hb_.data() + j * c_ * c_;
      double* vj = v + j * c_;
      if (c_ == 1) {
        vj[0] *= h[0];
        continue;
      }
      for (Index a = 0; a < c_; ++a) {
        double acc = 0.0;
        for (Index b = 0; b < c_; ++b) acc += h[a * c_ + b] * vj[b];
        hc_[a] = acc;
      }
      std::copy(hc_.begin(), hc_.end(), vj);
    }
  }

  /// v = J_f s for s (m x q, per neuron (U_i, w_i)): kappa (A s_U + (S o X s_W^T) U).
  void jf(const double* s, double* v) {
    gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(n_, c_, m_, a_.data(), m_, s, q_, v, c_,
                                                net_.kappa, false);
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(n_, m_, d_, x_, d_, s + c_, q_, t_.data(), m_,
                                                1.0, false);
    for (Index k = 0; k < n_ * m_; ++k) t_[k] *= s_[k];
    gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(n_, c_, m_, t_.data(), m_, u0_.data(), c_, v,
                                                c_, net_.kappa, true);
  }

  /// t = Eta J_f^T z for z (n x c), t (m x q): (eta_u kappa A^T z, eta_w kappa (S o z U^T)^T X).
  void eta_jft(const double* z, double* t) {
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, c_, n_, a_.data(), m_, z, c_, t, q_,
                                                net_.eta_u * net_.kappa, false);
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(n_, m_, c_, z, c_, u0_.data(), c_, t_.data(),
                                                m_, 1.0, false);
    for (Index k = 0; k < n_ * m_; ++k) t_[k] *= s_[k];
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, n_, t_.data(), m_, x_, d_, t + c_, q_,
                                                net_.eta_w * net_.kappa, false);
  }

  /// In-place LU with partial pivoting of a q x q row-major block (LAPACK's convention:
  /// whole rows swapped, piv[k] the row swapped with k). False if singular or not finite.
  bool lu_small(double* A, int* piv) const {
    const Index q = q_;
    for (Index k = 0; k < q; ++k) {
      Index p = k;
      double big = std::abs(A[k * q + k]);
      for (Index i = k + 1; i < q; ++i)
        if (std::abs(A[i * q + k]) > big) {
          big = std::abs(A[i * q + k]);
          p = i;
        }
      if (!(big > 0) || !std::isfinite(big)) return false;
      piv[k] = static_cast<int>(p);
      if (p != k)
        for (Index s = 0; s < q; ++s) std::swap(A[k * q + s], A[p * q + s]);
      const double inv = 1.0 / A[k * q + k];
      for (Index i = k + 1; i < q; ++i) {
        const double l = A[i * q + k] * inv;
        A[i * q + k] = l;
        if (l == 0.0) continue;
        for (Index s = k + 1; s < q; ++s) A[i * q + s] -= l * A[k * q + s];
      }
    }
    return true;
  }

  /// x <- B^-1 x from lu_small's factors.
  void lu_apply(const double* A, const int* piv, double* x) const {
    const Index q = q_;
    for (Index k = 0; k < q; ++k)
      if (piv[k] != k) std::swap(x[k], x[piv[k]]);
    for (Index i = 1; i < q; ++i) {
      double acc = x[i];
      for (Index k = 0; k < i; ++k) acc -= A[i * q + k] * x[k];
      x[i] = acc;
    }
    for (Index i = q - 1; i >= 0; --i) {
      double acc = x[i];
      for (Index k = i + 1; k < q; ++k) acc -= A[i * q + k] * x[k];
      x[i] = acc / A[i * q + i];
    }
  }

  /// X <- B^-1 X for X (q rows of length len, row-major): the same steps on whole rows.
  void lu_solve_rows(const double* A, const int* piv, double* X, Index len) const {
    const Index q = q_;
    for (Index k = 0; k < q; ++k)
      if (piv[k] != k) std::swap_ranges(X + k * len, X + (k + 1) * len, X + piv[k] * len);
    for (Index i = 1; i < q; ++i)
      for (Index k = 0; k < i; ++k) {
        const double l = A[i * q + k];
        if (l == 0.0) continue;
        const double* src = X + k * len;
        double* dst = X + i * len;
        for (Index t = 0; t < len; ++t) dst[t] -= l * src[t];
      }
    for (Index i = q - 1; i >= 0; --i) {
      double* dst = X + i * len;
      for (Index k = i + 1; k < q; ++k) {
        const double u = A[i * q + k];
        if (u == 0.0) continue;
        const double* src = X + k * len;
        for (Index t = 0; t < len; ++t) dst[t] -= u * src[t];
      }
      const double inv = 1.0 / A[i * q + i];
      for (Index t = 0; t < len; ++t) dst[t] *= inv;
    }
  }

  const Network net_;
  const double* x_;  // training inputs (n x d)
  const double* y_;  // and targets (n x c)
  const Index n_, m_, d_, c_, q_, N_, nb_;
  // At the Jacobian's point: U, act(Z), act'(Z), act''(Z); t_ is scratch of J_f / J_f^T.
  std::vector<double> u0_, a_, s_, s2_, t_;
  std::vector<double> f_, hb_;    // R = dl/dF, the loss Hessian blocks
  std::vector<double> blk_;       // LU of B_i per neuron
  std::vector<int> piv_;
  std::vector<double> jc_, gc_;   // a chunk of J_f and of B^-1 Eta J_f^T
  std::vector<double> sv_, tv_;   // per-neuron vectors of a solve
  Eigen::VectorXd v_, z_, pv_;
  std::vector<double> hc_;        // one sample's H_j v_j
  RowMatrix K_;                   // the capacitance, factored in place
  std::optional<Eigen::PartialPivLU<Eigen::Ref<RowMatrix>>> lu_;
  Gemm gemm_;
};

}  // namespace ntkflow::detail
