// Linear networks in the stiff (lazy) regime: the state Rodas4 integrates, and the
// stiffness test that hands a dopri5 run over to it (private header).
//
// Gradient flow moves every neuron row theta_i = (u_i, w_i) by the same (1+d) x (1+d)
// matrix (linear_fused.hpp), so Theta(t) = Theta_0 Phi(t) with dPhi/dt = Phi A(g(t)),
// Phi(0) = I, and g depends on the reduced variables (p, M, a) of docs/theory.md §B.1 only.
// The state [p, M, a, Phi] therefore carries the whole network in 2(d+1)^2 numbers,
// whatever the width, and its exact Jacobian is block lower-triangular with blocks that
// reduce to a d x d system: a Rodas4 step costs O(d^3), never a matrix of the m(1+d)
// parameters. Theta is formed, in one pass, only at record times.
//
// The linear solve of W = c I - J (see factor): with x = (xp, xM, xa, xPhi) and
// dg = -kappa^2 Sigma xp, the M and a rows give xM and xa from xp, and substituting them
// into the p row leaves L xp = rhs with a d x d matrix L; the Phi rows are
// xPhi (c I - A) = rPhi + Phi A'(dg), A' the part of A linear in g, solved row by row in
// O(d) thanks to A's arrow shape.
#pragma once

#include <Eigen/Core>
#include <Eigen/LU>
#include <algorithm>
#include <cmath>
#include <vector>

#include "ensemble.hpp"
#include "linear_decay.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow::detail {

/// StiffRate for d = 1 in closed form: the kernel is the number K = eta_w a + eta_u M, so
/// the rate is kappa^2 |K sigma| (a non-finite one counts as infinite, as in StiffRate).
/// One function for every caller, so that the scalar path and the SIMD lanes
/// (linear_lanes.hpp) take their stiffness decisions on the same rates.
inline double stiff_rate_line(const LinearModel& md, double a, double M) {
  const double k = std::abs((md.eta_u * M + md.eta_w * a) * md.sigma[0]);
  return std::isfinite(k) ? md.kappa * md.kappa * k : kInf;
}

/// Largest decay rate of the flow near (a, M): the top eigenvalue of kappa^2 K Sigma with
/// K = eta_w a I + eta_u M, the NTK in p-space (its non-zero eigenvalues are those of the
/// Gauss-Newton part of the Jacobian). A few power iterations per call, warm-started from
/// the previous vector: the kernel moves slowly between steps.
class StiffRate {
 public:
  explicit StiffRate(Index d) : v_(Eigen::VectorXd::Ones(d)), s_(d), k_(d) {}

  /// M: (d, d) row-major or any Eigen expression indexable as M(i, k).
  template <class MatM>
  double operator()(const LinearModel& md, double a, const MatM& M) {
    const Index d = md.dim;
    if (d == 1) return stiff_rate_line(md, a, M(0, 0));  // the iteration is exact at once
    const Eigen::Map<const RowMatrix> sigma(md.sigma, d, d);
    double lam = 0.0;
    for (int it = 0; it < 4; ++it) {
      s_.noalias() = sigma * v_;
      k_.noalias() = md.eta_u * (M * s_);
      k_ += (md.eta_w * a) * s_;
      const double nk = k_.norm(), nv = v_.norm();
      if (!(nk > 0) || !(nv > 0) || !std::isfinite(nk)) {
        v_.setOnes();
        return std::isfinite(nk) ? 0.0 : kInf;
      }
      lam = nk / nv;
      v_ = k_ / nk;
    }
    return md.kappa * md.kappa * lam;
  }

 private:
  Eigen::VectorXd v_, s_, k_;
};

/// State [p (d), M (d x d), a, Phi ((d+1) x (d+1))], Phi only with `propagate` (method
/// "full": the parameters are then available at records).
class LinearStiff {
 public:
  static Index scratch_size(const LinearModel& md) { return 4 * md.dim; }
  static Index state_size(const LinearModel& md, bool propagate = true) {
    return md.dim * (1 + md.dim) + 1 + (propagate ? (1 + md.dim) * (1 + md.dim) : 0);
  }

  LinearStiff(const LinearModel& md, const Records& out, Index row, Index n_times,
              NeuronRecorder* neurons, bool propagate)
      : md_(md), out_(out), rec_(md, out, row, n_times), neurons_(neurons), row_(row),
        T_(n_times), m_(md.width), d_(md.dim), q_(1 + md.dim), propagate_(propagate),
        decay_(has_decay(md)), r_(d_), sr_(d_), g_(d_), mg_(d_), gj_(d_), spj_(d_), sgj_(d_), rhs_(d_), dg_(d_), L_(d_, d_), lu_(d_),
        theta_(propagate ? m_ * q_ : 0) {}

  Index size() const { return state_size(md_, propagate_); }

  /// Parameters (u, w) at t = 0 give the drift references; (u_s, w_s) the state from
  /// which this system starts (the same, or where dopri5 handed over).
  void load(const double* u, const double* w, const double* u_s, const double* w_s,
            double* y) {
    u0_ = u_s;
    w0_ = w_s;
    const ConstVec uu(u_s, m_);
    const ConstMat W(w_s, m_, d_);
    Vec(y, d_).noalias() = W.transpose() * uu;
    Mat(y + d_, d_, d_).noalias() = W.transpose() * W;
    y[d_ + d_ * d_] = uu.squaredNorm();
    if (propagate_) Mat(y + phi_at(), q_, q_).setIdentity();
    const ConstVec u_ref(u, m_);
    const ConstMat W_ref(w, m_, d_);
    rec_.set_reference(u_ref.squaredNorm(), W_ref.squaredNorm());
    neurons_->reference(contiguous_neurons(u, w, d_));
  }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    const ConstVec p(y, d_);
    const ConstMat M(y + d_, d_, d_);
    const double a = y[d_ + d_ * d_];
    const double loss = rec_.loss(y, r_.data(), sr_.data());
    g_ = -md_.kappa * sr_;
    mg_.noalias() = M * g_;
    Vec dp(dy, d_);
    dp = md_.eta_w * a * g_ + md_.eta_u * mg_;
    Mat(dy + d_, d_, d_).noalias() = md_.eta_w * (g_ * p.transpose() + p * g_.transpose());
    dy[d_ + d_ * d_] = 2.0 * md_.eta_u * p.dot(g_);
    if (decay_) {
      dp -= decay_rate(md_) * p;
      Mat(dy + d_, d_, d_) -= (2.0 * md_.eta_w * md_.lambda_w) * M;
      dy[d_ + d_ * d_] -= 2.0 * md_.eta_u * md_.lambda_u * a;
    }
    if (propagate_) {  // dPhi/dt = Phi A(g), A = [[-eta_u lu, eta_w g^T], [eta_u g, -eta_w lw I]]
      const ConstMat Phi(y + phi_at(), q_, q_);
      Mat dPhi(dy + phi_at(), q_, q_);
      dPhi.col(0).noalias() = md_.eta_u * (Phi.rightCols(d_) * g_);
      dPhi.rightCols(d_).noalias() = (md_.eta_w * Phi.col(0)) * g_.transpose();
      if (decay_) {
        dPhi.col(0) -= (md_.eta_u * md_.lambda_u) * Phi.col(0);
        dPhi.rightCols(d_) -= (md_.eta_w * md_.lambda_w) * Phi.rightCols(d_);
      }
    }
    if (want_dloss) *dl = -g_.dot(dp);
    return loss;
  }

  /// W = c I - J(y): the d x d matrix L of the p rows, LU-factored (see the file comment).
  bool factor(const double* y, double c) {
    c_ = c;
    y_ = y;
    const ConstVec p(y, d_);
    const ConstMat M(y + d_, d_, d_);
    const double a = y[d_ + d_ * d_];
    const double k2 = md_.kappa * md_.kappa, eu = md_.eta_u, ew = md_.eta_w;
    const ConstMat sigma(md_.sigma, d_, d_);
    rec_.loss(y, r_.data(), sr_.data());
    gj_ = -md_.kappa * sr_;
    cM_ = c + 2.0 * ew * md_.lambda_w;
    ca_ = c + 2.0 * eu * md_.lambda_u;
    cu_ = c + eu * md_.lambda_u;  // Phi rows: c - A(0, 0) and c - A(k, k)
    cw_ = c + ew * md_.lambda_w;
    spj_.noalias() = sigma * p;  // Sigma p (Sigma symmetric), reused below
    Eigen::VectorXd& sg = sgj_;
    sg.noalias() = sigma * gj_;
    const double pg = p.dot(gj_), gg = gj_.squaredNorm();
    // L xp = (c + decay) xp - ew a dg - eu M dg - (2 eu ew / ca) g (g.xp + p.dg)
    //        - (eu ew / cM) [dg (p.g) + g (g.xp) + xp (g.g) + p (g.dg)],  dg = -k2 Sigma xp
    L_.noalias() = (k2 * eu) * (M * sigma);
    L_ += (k2 * ew * a) * sigma;
    L_.diagonal().array() += c + decay_rate(md_) - eu * ew * gg / cM_;
    L_.noalias() -= (2.0 * eu * ew / ca_) * gj_ * (gj_ - k2 * spj_).transpose();
    L_ += (eu * ew * k2 * pg / cM_) * sigma;
    L_.noalias() -= (eu * ew / cM_) * (gj_ * gj_.transpose() - k2 * p * sg.transpose());
    if (!L_.allFinite()) return false;
    lu_.compute(L_);
    return std::isfinite(lu_.rcond()) && lu_.rcond() > 1e-14;
  }

  void solve(double* r) {
    const ConstVec p(y_, d_);
    const ConstMat sigma(md_.sigma, d_, d_);
    const double k2 = md_.kappa * md_.kappa, eu = md_.eta_u, ew = md_.eta_w;
    Vec xp(r, d_);
    Mat xM(r + d_, d_, d_);
    double& xa = r[d_ + d_ * d_];
    Eigen::VectorXd& rhs = rhs_;  // members: solve runs six times a step, allocation-free
    rhs.noalias() = (eu / cM_) * (xM * gj_);
    rhs += xp + (ew * xa / ca_) * gj_;
    xp = lu_.solve(rhs);
    Eigen::VectorXd& dg = dg_;
    dg.noalias() = sigma * xp;
    dg *= -k2;
    xM.noalias() += (ew * dg) * p.transpose();  // rank-one updates: no d x d temporaries
    xM.noalias() += (ew * gj_) * xp.transpose();
    xM.noalias() += (ew * xp) * gj_.transpose();
    xM.noalias() += (ew * p) * dg.transpose();
    xM /= cM_;
    xa = (xa + 2.0 * eu * (gj_.dot(xp) + p.dot(dg))) / ca_;
    if (!propagate_) return;
    // xPhi (c I - A) = rPhi + Phi A'(dg): row by row, x0 from column 0, then x1.
    const ConstMat Phi(y_ + phi_at(), q_, q_);
    Mat X(r + phi_at(), q_, q_);
    X.col(0).noalias() += eu * (Phi.rightCols(d_) * dg);
    X.rightCols(d_).noalias() += (ew * Phi.col(0)) * dg.transpose();
    const double den = cu_ - eu * ew * gj_.squaredNorm() / cw_;
    for (Index i = 0; i < q_; ++i) {
      const double x0 = (X(i, 0) + eu * X.row(i).tail(d_).dot(gj_) / cw_) / den;
      X(i, 0) = x0;
      X.row(i).tail(d_) = (X.row(i).tail(d_) + ew * x0 * gj_.transpose()) / cw_;
    }
  }

  /// Error scales of the components that can pass near 0 while the parameters do not:
  /// p_k = W_k . u against at least sqrt(a M_kk / m), M_kl against sqrt(M_kk M_ll / m)
  /// (the sizes a sum of m random products has), and Phi_ij against the largest entry of
  /// column j (Theta_0 Phi_j is parameter column j). Held to rtol of themselves, p before
  /// the escape or Phi's off-diagonal right after a hand-over would demand steps no
  /// method can take.
  void magnitudes(const double* y, const double* yn, double* mag) const {
    const double inv_m = 1.0 / static_cast<double>(m_);
    for (const double* z : {y, yn}) {
      const bool first = z == y;
      const double a = std::abs(z[d_ + d_ * d_]);
      auto keep = [&](Index q, double v) { mag[q] = first ? v : std::max(mag[q], v); };
      for (Index k = 0; k < d_; ++k) {
        const double mkk = std::abs(z[d_ + k * d_ + k]);
        keep(k, std::max(std::abs(z[k]), std::sqrt(a * mkk * inv_m)));
        for (Index l = 0; l < d_; ++l) {
          const double mll = std::abs(z[d_ + l * d_ + l]);
          keep(d_ + k * d_ + l,
               std::max(std::abs(z[d_ + k * d_ + l]), std::sqrt(mkk * mll * inv_m)));
        }
      }
      keep(d_ + d_ * d_, a);
      if (!propagate_) continue;
      const Index at = phi_at();
      for (Index c = 0; c < q_; ++c) {
        double big = 0.0;
        for (Index r = 0; r < q_; ++r) big = std::max(big, std::abs(z[at + r * q_ + c]));
        for (Index r = 0; r < q_; ++r) keep(at + r * q_ + c, big);
      }
    }
  }

  void record(const double* y, Index j) {
    rec_.write(j, y, y[d_ + d_ * d_], y + d_, rec_.loss(y, r_.data(), sr_.data()));
    if (propagate_ && neurons_->on()) {
      const double* th = params(y);
      neurons_->write(row_, j, contiguous_neurons(th, th + m_, d_));
    }
  }

  void record_params(const double* y, Index slot) {
    if (!propagate_ || (out_.u == nullptr && out_.w == nullptr)) return;
    const double* th = params(y);
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(th, th + m_, out_.u + at * m_);
    if (out_.w) std::copy(th + m_, th + m_ * q_, out_.w + at * m_ * d_);
  }

  void fail_from(Index j) { rec_.fail_from(j); }

 private:
  Index phi_at() const { return d_ + d_ * d_ + 1; }

  /// [u, W] = Theta_0 Phi: u = u0 Phi00 + W0 Phi[1:, 0], W = u0 Phi[0, 1:] + W0 Phi[1:, 1:].
  const double* params(const double* y) {
    const ConstMat Phi(y + phi_at(), q_, q_);
    const ConstVec u0(u0_, m_);
    const ConstMat W0(w0_, m_, d_);
    Vec u(theta_.data(), m_);
    Mat W(theta_.data() + m_, m_, d_);
    u.noalias() = Phi(0, 0) * u0 + W0 * Phi.col(0).tail(d_);
    W.noalias() = u0 * Phi.row(0).tail(d_) + W0 * Phi.bottomRightCorner(d_, d_);
    return theta_.data();
  }

  const LinearModel& md_;
  const Records& out_;
  Recorder rec_;
  NeuronRecorder* neurons_;
  Index row_, T_, m_, d_, q_;
  bool propagate_, decay_;
  Eigen::VectorXd r_, sr_, g_, mg_;
  Eigen::VectorXd gj_, spj_, sgj_;  // g, Sigma p, Sigma g at the Jacobian's point
  Eigen::VectorXd rhs_, dg_;         // solve's scratch
  RowMatrix L_;
  Eigen::PartialPivLU<Eigen::MatrixXd> lu_;
  std::vector<double> theta_;
  const double *u0_ = nullptr, *w0_ = nullptr, *y_ = nullptr;
  double c_ = 0, cM_ = 0, ca_ = 0, cu_ = 0, cw_ = 0;
};

}  // namespace ntkflow::detail
