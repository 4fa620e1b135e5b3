// Two-layer networks with an activation on a dataset: gradient flow / descent of the full
// m(1 + d) parameters, with the records of the linear path plus the kernel records
// (Gram matrices, kernel metrics, parameter movement, relu pattern changes, linearised run).
//
// Gradient of L = 1/(2n) ||r||^2, r = kappa act(X W^T) u - y, by matrix products only
// (no per-parameter Jacobian): with Z = X W^T (n x m), H = act(Z), S = act'(Z),
//   dL/du = kappa/n H^T r,     dL/dW = kappa/n diag(u) (diag(r) S)^T X.
// Two GEMMs of n m d each per evaluation; everything else is O(n m).
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include "ensemble.hpp"
#include "gemm.hpp"
#include "gram.hpp"
#include "ntkflow/nonlinear.hpp"

namespace ntkflow {
namespace detail {

namespace {

constexpr double kTwoOverSqrtPi = 1.1283791670955126;

/// What a run computes besides the common records, decided once.
struct Plan {
  bool metrics = false;     // ntk_change / kernel_distance / kta
  bool train_gram = false;  // kernel.gram on the training set
  bool probe_gram = false;  // kernel.gram on the probe set
  bool move = false;
  bool pattern = false;
  bool linearized = false;  // the linearised twin (loss_lin, lin_gap, its test records)
  bool test = false;        // a test set: the network's outputs on it at every record time
  bool test_lin = false;    // the twin on the test set: the cross Gram K_0(X_test, X)
  bool k0() const { return metrics || linearized; }
  bool any_gram() const { return metrics || train_gram || probe_gram || linearized; }

  Plan(const Network& net, const KernelRecords& kr) {
    metrics = kr.ntk_change || kr.kernel_distance || kr.kta;
    probe_gram = kr.gram && kr.probe;
    train_gram = kr.gram && !kr.probe;
    move = kr.move_u || kr.move_w;
    pattern = kr.pattern_change && net.act == Activation::relu;
    test = kr.test_x != nullptr && kr.n_test > 0;
    test_lin = test && (kr.test_loss_lin || kr.test_error_lin || kr.test_lin_gap);
    linearized = kr.loss_lin || kr.lin_gap || test_lin;
  }
};

// GEMM packing space for every product shape of the gradient (also metered by
// network_workspace_bytes).
void reserve_gradient_gemm(Gemm& gemm, Index n, Index m, Index d) {
  gemm.reserve(n, m, d);  // Z = X W^T
  gemm.reserve(m, d, n);  // (diag(r) S)^T X
  gemm.reserve(d, d, m);  // W^T W
}

// The same for the network's outputs on n_test test inputs (Z = X_test W^T).
void reserve_test_gemm(Gemm& gemm, const Network& net, Index n_test) {
  if (net.act != Activation::linear && n_test > 0) gemm.reserve(n_test, net.width, net.dim);
}

/// Fraction of f (n) whose sign differs from the +-1 target y; f = 0 (and NaN) counts as
/// an error, as sign(0) = 0 matches neither label.
double sign_error(const double* f, const double* y, Index n) {
  Index wrong = 0;
  for (Index j = 0; j < n; ++j) wrong += (y[j] > 0 ? !(f[j] > 0) : !(f[j] < 0)) ? 1 : 0;
  return static_cast<double>(wrong) / static_cast<double>(n);
}
/// relu's field jumps where a pre-activation crosses 0; the adaptive solver then integrates
/// it piece by piece (docs/theory.md §H). Fixed steps and descent step across as they are.
bool is_piecewise(const Network& net, const Schedule& sched) {
  return net.act == Activation::relu && sched.solver == Solver::dopri5 && net.eta_w > 0;
}

// Modes of a (sample, unit) pair under the piecewise integration.
constexpr std::uint8_t kOff = 0;    // w_i . x_j < 0: relu and relu' are 0
constexpr std::uint8_t kOn = 1;     // w_i . x_j > 0: relu = z, relu' = 1
constexpr std::uint8_t kSlide = 2;  // sliding on w_i . x_j = 0 (Filippov equivalent control)
// Crossings closer than this fraction of a step to the first are handled as one event.
constexpr double kTogether = 1e-9;
// Sweeps of the coordinate descent for the controls of several sliding pairs of one unit.
constexpr int kSweeps = 500;

LinearModel recorder_model(const Network& net) {
  LinearModel lm;  // only the fields the Recorder reads when writing
  lm.width = net.width;
  lm.dim = net.dim;
  lm.kappa = net.kappa;
  lm.eta_u = net.eta_u;
  lm.eta_w = net.eta_w;
  return lm;
}

}  // namespace

/// Everything one thread needs, sized once; it is also the System of the trajectory it is
/// running (start() loads one). State y = [u (m), W (m x d, row-major)].
class NetworkThread {
 public:
  NetworkThread(const Network& net, const TrainingData& data, const Schedule& sched,
                const Records& out, const KernelRecords& kr)
      : net_(net),
        lm_(recorder_model(net)),
        data_(data),
        sched_(sched),
        out_(out),
        kr_(kr),
        plan_(net, kr),
        n_(data.samples),
        m_(net.width),
        d_(net.dim),
        T_(sched.n_times),
        g_(plan_.probe_gram ? kr.n_probe : n_),
        nt_(plan_.test ? kr.n_test : 0),
        neurons_(out, net.width, sched.n_times, net.eta_u, net.eta_w),
        piecewise_(is_piecewise(net, sched)) {
    const bool linear = net.act == Activation::linear;
    // Feature buffers serve the gradient (Z/H and S/B, n x m) and the Gram features.
    Index feat = linear ? 0 : n_ * m_;
    if (plan_.any_gram()) feat = std::max(feat, gram_feature_size(net, n_));
    if (plan_.probe_gram) feat = std::max(feat, gram_feature_size(net, kr.n_probe));
    if (plan_.test && !linear) feat = std::max(feat, nt_ * m_);  // test pre-activations
    if (plan_.test_lin)  // features of both sides of the cross Gram K_0(X_test, X)
      feat = std::max(feat, gram_feature_size(net, nt_) + gram_feature_size(net, n_));
    hs_.resize(static_cast<std::size_t>(feat));
    gs_.resize(static_cast<std::size_t>(linear ? 0 : feat));
    f_.resize(static_cast<std::size_t>(n_));
    ky_.resize(static_cast<std::size_t>(n_));
    p_.resize(static_cast<std::size_t>(d_));
    c_.resize(static_cast<std::size_t>(d_));
    M_.resize(static_cast<std::size_t>(d_ * d_));
    if (plan_.move) {
      u0_.resize(static_cast<std::size_t>(m_));
      w0_.resize(static_cast<std::size_t>(m_ * d_));
    }
    if (plan_.pattern) {
      pattern0_.resize(static_cast<std::size_t>(n_ * m_));
      changed_.resize(static_cast<std::size_t>(m_));
    }
    if (plan_.k0()) k0_.resize(static_cast<std::size_t>(n_ * n_));
    if (plan_.metrics && !plan_.train_gram) kt_.resize(static_cast<std::size_t>(n_ * n_));
    if (plan_.linearized) {
      eig_.emplace(n_);  // preallocates its n x n storage
      coef_.resize(n_);
      twin_g_.resize(static_cast<std::size_t>(n_));
      twin_r_.resize(static_cast<std::size_t>(n_));
    }
    if (plan_.test) ft_.resize(static_cast<std::size_t>(nt_));
    if (plan_.test_lin) {
      ft0_.resize(static_cast<std::size_t>(nt_));
      ftl_.resize(static_cast<std::size_t>(nt_));
      kx_.resize(static_cast<std::size_t>(nt_ * n_));
      twin_h_.resize(static_cast<std::size_t>(n_));
      twin_w_.resize(static_cast<std::size_t>(n_));
    }
    if (piecewise_) {
      z_.resize(static_cast<std::size_t>(n_ * m_));
      on_.resize(static_cast<std::size_t>(n_ * m_));
      P_.resize(static_cast<std::size_t>(m_ * d_));
      scratch_.resize(static_cast<std::size_t>(m_ * (1 + d_)));
      mode_.resize(static_cast<std::size_t>(n_ * m_));
      slides_.reserve(static_cast<std::size_t>(std::min<Index>(n_ * m_, 4096)));
      crossing_.reserve(64);
      switched_.reserve(64);
      xnorm2_.resize(static_cast<std::size_t>(n_));
      for (Index j = 0; j < n_; ++j)
        xnorm2_[j] = ConstVec(data.x + j * d_, d_).squaredNorm();
    }
    reserve_gradient_gemm(gemm_, n_, m_, d_);
    if (plan_.test) reserve_test_gemm(gemm_, net, nt_);
    if (plan_.any_gram()) gram_.reserve(net, n_, n_);
    if (plan_.probe_gram) gram_.reserve(net, kr.n_probe, kr.n_probe);
    if (plan_.test_lin) gram_.reserve(net, nt_, n_);
    const Eigen::Map<const Eigen::VectorXd> yv(data.y, n_);
    y_norm2_ = yv.squaredNorm();
  }

  Index state_size() const { return m_ * (1 + d_); }

  NetworkThread& start(Index k, const double* u, const double* w, double* y) {
    row_ = k;
    rec_.emplace(lm_, out_, k, T_);
    std::copy(u, u + m_, y);
    std::copy(w, w + m_ * d_, y + m_);
    const ConstVec uu(u, m_);
    const ConstMat W(w, m_, d_);
    rec_->set_reference(uu.squaredNorm(), gram_trace(w));
    neurons_.reference(contiguous_neurons(u, w, d_));
    if (plan_.move) {
      std::copy(u, u + m_, u0_.begin());
      std::copy(w, w + m_ * d_, w0_.begin());
      u0_norm_ = uu.norm();
      w0_norm_ = W.norm();
    }
    if (plan_.pattern) {
      pre_activation(w);
      for (Index q = 0; q < n_ * m_; ++q) pattern0_[q] = hs_[q] > 0 ? 1 : 0;
    }
    if (plan_.k0()) {
      gram_serial(net_, u, w, data_.x, n_, nullptr, 0, hs_.data(), gs_.data(), gram_,
                  k0_.data());
      const Eigen::Map<const Eigen::VectorXd> k0(k0_.data(), n_ * n_);
      k0_max_ = k0.cwiseAbs().maxCoeff();
      k0_unit_ = k0_max_ > 0 ? (k0 / k0_max_).norm() : 0.0;  // ||K_0|| / max|K_0|
    }
    if (plan_.test_lin) {
      // K_0(X_test, X) (n_test x n) and f_0 on the test set, once per trajectory.
      gram_serial(net_, u, w, kr_.test_x, nt_, data_.x, n_, hs_.data(), gs_.data(), gram_,
                  kx_.data());
      test_outputs(y, ft0_.data());
      Vec r0t(ftl_.data(), nt_);  // scratch: the test residual at t = 0
      r0t = ConstVec(ft0_.data(), nt_) - ConstVec(kr_.test_y, nt_);
      r0t_norm_ = r0t.norm();
    }
    if (plan_.linearized) linearised_losses(y);
    if (piecewise_) {
      pre_activation(w);
      for (Index q = 0; q < n_ * m_; ++q) set_mode(q, hs_[q] > 0 ? kOn : kOff);
      slides_.clear();
    }
    return *this;
  }

  // ---- the System interface of integrate.hpp ----
  Index size() const { return m_ * (1 + d_); }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    const ConstVec u(y, m_);
    const ConstMat W(y + m_, m_, d_);
    const ConstMat X(data_.x, n_, d_);
    const double kappa = net_.kappa;
    const double scale = kappa / static_cast<double>(n_);
    Vec du(dy, m_);
    Mat dW(dy + m_, m_, d_);
    double loss;
    if (piecewise_) {
      loss = field_piecewise(y, dy);
    } else if (net_.act == Activation::linear) {
      // f = kappa X p with p = W^T u: O((n + m) d), the data never meets the width.
      loss = forward_linear(y);
      Vec c(c_.data(), d_);
      c.noalias() = X.transpose() * ConstVec(f_.data(), n_);  // f_ holds r here
      c *= scale;
      du.noalias() = W * c;
      du *= -net_.eta_u;
      // dW = -eta_w u c^T, written out: an Eigen outer product of a scaled vector may
      // evaluate the vector into a heap temporary.
      for (Index i = 0; i < m_; ++i) {
        const double a = -net_.eta_w * u[i];
        for (Index k = 0; k < d_; ++k) dy[m_ + i * d_ + k] = a * c_[k];
      }
    } else {
      loss = forward(y, true);
      const ConstVec r(f_.data(), n_);  // f_ holds r after forward()
      const ConstMat H(hs_.data(), n_, m_);
      Mat B(gs_.data(), n_, m_);
      if (net_.eta_u > 0) {
        du.noalias() = H.transpose() * r;
        du *= -net_.eta_u * scale;
      } else {
        du.setZero();
      }
      if (net_.eta_w > 0) {
        B.array().colwise() *= r.array();  // B = diag(r) S
        gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, n_, B.data(), m_, data_.x, d_,
                                                    dy + m_, d_, -net_.eta_w * scale, false);
        dW.array().colwise() *= u.array();
      } else {
        dW.setZero();
      }
    }
    if (want_dloss) {
      // dL/dt = -(eta_u ||dL/du||^2 + eta_w ||dL/dW||^2) = -(||du||^2/eta_u + ||dW||^2/eta_w)
      double v = 0.0;
      if (net_.eta_u > 0) v += du.squaredNorm() / net_.eta_u;
      if (net_.eta_w > 0) v += dW.squaredNorm() / net_.eta_w;
      *dl = -v;
    }
    // A saturating activation can keep the loss finite while the weights run off to 1e173:
    // the records (||W||^2, the NTK) would overflow under an "ok" status. Such a state
    // counts as diverged, like a non-finite loss.
    if (std::isfinite(loss)) {
      const double a = u.squaredNorm();
      const double b = ConstVec(y + m_, m_ * d_).squaredNorm();
      const double k2 = net_.kappa * net_.kappa;
      if (!std::isfinite(k2 * (1.0 + net_.eta_u + net_.eta_w) * (a + b)))
        return std::numeric_limits<double>::infinity();
    }
    return loss;
  }

  void record(const double* y, Index j) {
    const ConstVec u(y, m_);
    const ConstMat W(y + m_, m_, d_);
    const Index at = row_ * T_ + j;
    double loss;
    if (net_.act == Activation::linear) {
      loss = forward_linear(y, kr_.error ? kr_.error + at : nullptr);
    } else {
      pre_activation(y + m_);
      if (plan_.pattern) record_pattern(at);
      loss = forward(y, false, /*have_z=*/true, kr_.error ? kr_.error + at : nullptr);
    }
    Vec p(p_.data(), d_);
    p.noalias() = W.transpose() * u;
    gram_trace(y + m_);  // M = W^T W into M_
    rec_->write(j, p_.data(), u.squaredNorm(), M_.data(), loss);
    if (plan_.linearized) {
      twin_at(j);  // f_ still holds r_t = f_t(X) - y
      if (kr_.lin_gap) {
        const double gap = (ConstVec(f_.data(), n_) - ConstVec(twin_r_.data(), n_)).norm();
        kr_.lin_gap[at] = r0_norm_ > 0 ? gap / r0_norm_ : kNaN;
      }
    }
    if (plan_.test) record_test(y, at);
    neurons_.write(row_, j, contiguous_neurons(y, y + m_, d_));
    if (plan_.move) {
      const ConstVec u0(u0_.data(), m_);
      const ConstMat W0(w0_.data(), m_, d_);
      if (kr_.move_u) kr_.move_u[at] = u0_norm_ > 0 ? (u - u0).norm() / u0_norm_ : kNaN;
      if (kr_.move_w) kr_.move_w[at] = w0_norm_ > 0 ? (W - W0).norm() / w0_norm_ : kNaN;
    }
    if (plan_.train_gram || plan_.metrics) {
      double* K = plan_.train_gram ? kr_.gram + at * n_ * n_ : kt_.data();
      gram_serial(net_, y, y + m_, data_.x, n_, nullptr, 0, hs_.data(), gs_.data(), gram_, K);
      if (plan_.metrics) record_metrics(K, at);
    }
    if (plan_.probe_gram) {
      gram_serial(net_, y, y + m_, kr_.probe, g_, nullptr, 0, hs_.data(), gs_.data(), gram_,
                  kr_.gram + at * g_ * g_);
    }
  }

  void record_params(const double* y, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(y, y + m_, out_.u + at * m_);
    if (out_.w) std::copy(y + m_, y + m_ * (1 + d_), out_.w + at * m_ * d_);
  }


  // ---- switching hooks of integrate_dopri5 (relu only; see is_piecewise) ----

  /// Fraction of the accepted step ds before the first pre-activation crosses out of its
  /// piece, located on the dense output; 1 when none does. The last field evaluation was
  /// at ds.yn, so z_ holds its pre-activations.
  double switch_fraction(const DenseStep& ds) {
    if (!piecewise_) return 1.0;
    double first = 1.0;
    crossing_.clear();
    for (Index j = 0; j < n_; ++j) {
      if (!row_outside(j)) continue;
      const double* x = data_.x + j * d_;
      for (Index i = 0; i < m_; ++i) {
        const Index q = j * m_ + i;
        if (mode_[q] == kSlide || inside(mode_[q], z_[q])) continue;
        double c[5] = {0, 0, 0, 0, 0}, ck[5];
        for (Index k = 0; k < d_; ++k) {
          ds.coeffs(m_ + i * d_ + k, ck);
          for (int e = 0; e < 5; ++e) c[e] += ck[e] * x[k];
        }
        // Already outside at the start (rounding at a surface just switched): the mode
        // is repaired at the end of the step by update_modes, with no event.
        if (!inside(mode_[q], c[0])) continue;
        const double exit = first_exit(mode_[q], c, std::min(1.0, first + kTogether));
        if (exit > first + kTogether) continue;
        crossing_.push_back({q, exit});
        first = std::min(first, exit);
      }
    }
    // Crossings within kTogether of the first are one event (several pairs of one unit
    // cross at once when w_i passes through 0 in one dimension, or by symmetry).
    crossing_.erase(std::remove_if(crossing_.begin(), crossing_.end(),
                                   [&](const Crossing& c) { return c.at > first + kTogether; }),
                    crossing_.end());
    return first;
  }

  /// Brings the modes in line with the state y at the end of a step: pairs outside their
  /// piece switch (to the other side, or to sliding when both sides push into the surface)
  /// and sliding pairs that the flow has carried off their surface leave it. `fresh`:
  /// the last field evaluation was at y. True when the field at y changed.
  bool update_modes(const double* y, bool fresh) {
    if (!piecewise_) return false;
    switched_.clear();
    if (!fresh) field_piecewise(y, scratch_.data());  // z, r and the controls at y
    const ConstVec r_now(f_.data(), n_);
    for (std::size_t s = 0; s < slides_.size();) {
      const Slide& sl = slides_[s];
      const double z = z_[sl.j * m_ + sl.i];
      // A pair leaves its surface once the flow has carried z off it by more than the
      // absolute tolerance of the weights, with its control on the bound of that side
      // (alpha = 1 above, 0 below): the sliding field then equals that side's field, so
      // the exit is tangential and needs no event. Rounding noise (a unit pinned at w = 0
      // by more surfaces than dimensions) stays below the threshold.
      const double off = sched_.atol * std::sqrt(xnorm2_[sl.j]);
      const double rj = r_now[sl.j];
      const double alpha = rj != 0 ? sl.beta / rj : 0.5;
      std::uint8_t to = kSlide;
      if (alpha >= 1.0 && z > off) to = kOn;
      if (alpha <= 0.0 && z < -off) to = kOff;
      if (to == kSlide) {
        ++s;
        continue;
      }
      set_mode(sl.j * m_ + sl.i, to);
      slides_.erase(slides_.begin() + static_cast<std::ptrdiff_t>(s));
    }
    // The located crossings move to their other side whatever z rounds to at the located
    // state (it may round back inside, and would cross again at once); all of them at
    // once, so that pairs crossing together see each other. Sliding pairs were released
    // above on the controls before the switch, as the SciPy reference does: deciding them
    // on the switched pattern instead gave 6e-6 relative from rk4's converged answer on
    // one test problem, against 1e-8 this way.
    if (!fresh)
      for (const Crossing& c : crossing_) {
        set_mode(c.q, mode_[c.q] == kOn ? kOff : kOn);
        switched_.push_back(c.q);
      }
    // Pairs found outside their piece without a located crossing (a crossing and a return
    // within one step's rounding) move by the sign of z.
    const std::size_t located = switched_.size();
    for (Index q = 0; q < n_ * m_; ++q) {
      if (q % m_ == 0 && !row_outside(q / m_)) {
        q += m_ - 1;
        continue;
      }
      if (mode_[q] == kSlide || inside(mode_[q], z_[q])) continue;
      if (std::find(switched_.begin(), switched_.begin() + static_cast<std::ptrdiff_t>(located),
                    q) != switched_.begin() + static_cast<std::ptrdiff_t>(located))
        continue;
      set_mode(q, z_[q] > 0 ? kOn : kOff);
      switched_.push_back(q);
    }
    if (switched_.empty()) return false;
    field_piecewise(y, scratch_.data());  // P on the new pattern, for the sliding test
    // Then sliding, on the field of the new pattern: a switched pair slides when the flow
    // pushes into its surface from both sides. d(w_i . x_j)/dt up to the factor
    // eta_w kappa / n > 0: dz_off without the pair, dz_on with it.
    const ConstVec u(y, m_);
    const ConstVec r(f_.data(), n_);
    for (const Index q : switched_) {
      const Index j = q / m_, i = q % m_;
      const ConstVec x(data_.x + j * d_, d_);
      double pj = x.dot(ConstVec(P_.data() + i * d_, d_));
      if (mode_[q] == kOn) pj -= r[j] * xnorm2_[j];
      const double dz_off = -u[i] * pj;
      const double dz_on = dz_off - u[i] * r[j] * xnorm2_[j];
      if (dz_on < 0 && dz_off > 0) add_slide(j, i);
    }
    return true;
  }

  void fail_from(Index j) {
    rec_->fail_from(j);  // the common records and the parameters
    for (Index q = j; q < T_; ++q) {
      const Index at = row_ * T_ + q;
      for (double* rec : {kr_.ntk_change, kr_.kernel_distance, kr_.kta, kr_.move_u,
                          kr_.move_w, plan_.pattern ? kr_.pattern_change : nullptr,
                          kr_.error, kr_.lin_gap, kr_.test_loss, kr_.test_error,
                          kr_.test_lin_gap})
        if (rec) rec[at] = kNaN;
      if (kr_.gram) std::fill(kr_.gram + at * g_ * g_, kr_.gram + (at + 1) * g_ * g_, kNaN);
      // The twin's own records stay: the linearised run depends on the initial state only
      // (loss_lin is written in start(); its test loss and error are written here).
      if (plan_.test_lin) twin_at(q);
    }
  }

 private:
  struct Slide {
    Index j, i;       // sample, unit
    double beta = 0;  // alpha_j r_j, alpha_j in [0, 1] the control: its term in P_i
  };

  static bool inside(std::uint8_t mode, double z) { return mode == kOn ? z > 0 : z <= 0; }

  /// First theta in (0, hi] where the dense-output pre-activation c leaves the piece of
  /// `mode` (it is inside at 0): the first sampled bracket, then bisection to a relative
  /// width of 2^-52. Returns the outside end, so the state there has crossed; 2 when c
  /// stays inside up to hi.
  static double first_exit(std::uint8_t mode, const double c[5], double hi) {
    constexpr int kSamples = 16;
    double lo = 0.0;
    bool found = false;
    for (int s = 1; s <= kSamples && !found; ++s) {
      const double th = hi * s / kSamples;
      found = !inside(mode, DenseStep::eval(c, th));
      (found ? hi : lo) = th;
    }
    if (!found) return 2.0;  // not before hi
    for (int it = 0; it < 60 && hi - lo > 0x1p-52 * hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      (inside(mode, DenseStep::eval(c, mid)) ? lo : hi) = mid;
    }
    return hi;
  }

  void add_slide(Index j, Index i) {
    set_mode(j * m_ + i, kSlide);
    const auto at = std::lower_bound(slides_.begin(), slides_.end(), Slide{j, i},
                                     [](const Slide& a, const Slide& b) {
                                       return a.i != b.i ? a.i < b.i : a.j < b.j;
                                     });
    slides_.insert(at, Slide{j, i});
  }

  /// The relu field on the current pieces: pairs kOn and kOff use the smooth field of their
  /// side (continued past the surface within a step), sliding pairs the Filippov field
  /// that keeps w_i . x_j = 0. Writes dy; leaves Z in z_, r in f_ and
  /// P = (diag(r) S)^T X (with the sliding terms) in P_. Returns the loss.
  double field_piecewise(const double* y, double* dy) {
    const ConstVec u(y, m_);
    const Index len = n_ * m_;
    pre_activation(y + m_, z_.data());
    // H = z on the pairs switched on and 0 elsewhere (one vectorisable pass); sliding pairs
    // (a short list) take relu(z), which is 0 up to the drift off their surface.
    double* H = hs_.data();
    for (Index q = 0; q < len; ++q) H[q] = z_[q] * on_[q];
    for (const Slide& sl : slides_) H[sl.j * m_ + sl.i] = std::max(z_[sl.j * m_ + sl.i], 0.0);
    const ConstMat Hm(H, n_, m_);
    Vec r(f_.data(), n_);
    r.noalias() = Hm * u;
    r *= net_.kappa;
    r -= ConstVec(data_.y, n_);
    const double loss = 0.5 * r.squaredNorm() / static_cast<double>(n_);
    const double scale = net_.kappa / static_cast<double>(n_);
    Vec du(dy, m_);
    if (net_.eta_u > 0) {
      du.noalias() = Hm.transpose() * r;
      du *= -net_.eta_u * scale;
    } else {
      du.setZero();
    }
    double* B = gs_.data();  // diag(r) S with S = relu' on the pieces (sliding: 0 here)
    for (Index j = 0; j < n_; ++j)
      for (Index i = 0; i < m_; ++i) B[j * m_ + i] = on_[j * m_ + i] * r[j];
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, n_, B, m_, data_.x, d_, P_.data(), d_,
                                                1.0, false);
    slide_controls();
    for (Index i = 0; i < m_; ++i) {
      const double a = -net_.eta_w * scale * u[i];
      for (Index k = 0; k < d_; ++k) dy[m_ + i * d_ + k] = a * P_[i * d_ + k];
    }
    return loss;
  }

  /// Equivalent controls of the sliding pairs, unit by unit. With beta_j = alpha_j r_j the
  /// sliding part of unit i's field is P_i + sum_j beta_j x_j; the controls minimise its
  /// norm over alpha in [0, 1] (cyclic coordinate descent on a convex quadratic, exact in
  /// one pass for one pair). Where that minimum is reached inside the box, every
  /// x_j . (P_i + sum beta x) = 0: the pairs stay on their surfaces, d(w_i . x_j)/dt = 0.
  /// Otherwise (more sliding pairs than the data can hold, e.g. w_i pinned at 0) it is the
  /// least-motion selection of Filippov's set. Always from alpha = 0: the field stays a
  /// function of the state alone.
  void slide_controls() {
    const ConstVec r(f_.data(), n_);
    for (std::size_t s0 = 0; s0 < slides_.size();) {
      const Index i = slides_[s0].i;
      std::size_t s1 = s0 + 1;
      while (s1 < slides_.size() && slides_[s1].i == i) ++s1;
      Vec v(P_.data() + i * d_, d_);
      const double scale = v.norm();
      for (std::size_t s = s0; s < s1; ++s) slides_[s].beta = 0.0;
      for (int sweep = 0; sweep < kSweeps; ++sweep) {
        double change = 0.0, size = scale;
        for (std::size_t s = s0; s < s1; ++s) {
          Slide& sl = slides_[s];
          const ConstVec x(data_.x + sl.j * d_, d_);
          const double rj = r[sl.j];
          v -= sl.beta * x;
          const double best = xnorm2_[sl.j] > 0 ? -x.dot(v) / xnorm2_[sl.j] : 0.0;
          const double beta = std::clamp(best, std::min(0.0, rj), std::max(0.0, rj));
          v += beta * x;
          change = std::max(change, std::abs(beta - sl.beta) * std::sqrt(xnorm2_[sl.j]));
          size = std::max(size, std::abs(beta) * std::sqrt(xnorm2_[sl.j]));
          sl.beta = beta;
        }
        if (s1 - s0 == 1 || change <= 1e-15 * size) break;
      }
      s0 = s1;
    }
  }

  /// M = W^T W into M_; returns its trace ||W||_F^2 (as the Recorder sums it).
  double gram_trace(const double* w) {
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, d_, m_, w, d_, w, d_, M_.data(), d_, 1.0,
                                                false);
    double tr = 0.0;
    for (Index a = 0; a < d_; ++a) tr += M_[a * d_ + a];
    return tr;
  }

  /// Z = X W^T into hs_ (n x m).
  void pre_activation(const double* w) { pre_activation(w, hs_.data()); }
  void pre_activation(const double* w, double* z) {
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(n_, m_, d_, data_.x, d_, w, d_, z, m_, 1.0,
                                                false);
  }

  /// Whether some pair of sample j may be outside its piece (a branch-free pass over the
  /// row; sliding pairs with z > 0 also answer yes, and are sorted out by the caller).
  bool row_outside(Index j) const {
    const double* z = z_.data() + j * m_;
    const double* on = on_.data() + j * m_;
    int any = 0;
    for (Index i = 0; i < m_; ++i) any |= static_cast<int>((z[i] > 0) != (on[i] != 0));
    return any != 0;
  }

  /// The piece of pair q, kept twice: as a code for the logic and as relu' (1 on, else 0)
  /// for the field's vectorised passes.
  void set_mode(Index q, std::uint8_t mode) {
    mode_[q] = mode;
    on_[q] = mode == kOn ? 1.0 : 0.0;
  }

  /// From Z (computed here unless have_z): H = act(Z) in hs_, S = act'(Z) in gs_ (when
  /// want_s), then r = kappa H u - y in f_. Returns the loss.
  /// With `error`, also writes there the sign error of f on the training targets.
  double forward(const double* y, bool want_s, bool have_z = false, double* error = nullptr) {
    if (!have_z) pre_activation(y + m_);
    activate(hs_.data(), gs_.data(), n_ * m_, want_s);
    const ConstMat H(hs_.data(), n_, m_);
    Vec r(f_.data(), n_);
    r.noalias() = H * ConstVec(y, m_);
    r *= net_.kappa;
    if (error) *error = sign_error(f_.data(), data_.y, n_);
    r -= ConstVec(data_.y, n_);
    return 0.5 * r.squaredNorm() / static_cast<double>(n_);
  }

  /// H = act(Z) in place over len entries, and S = act'(Z) when want_s.
  void activate(double* Z, double* S, Index len, bool want_s) {
    switch (net_.act) {
      case Activation::relu:
        if (want_s)
          for (Index q = 0; q < len; ++q) S[q] = Z[q] > 0 ? 1.0 : 0.0;
        for (Index q = 0; q < len; ++q) Z[q] = Z[q] > 0 ? Z[q] : 0.0;
        break;
      case Activation::tanh:
        for (Index q = 0; q < len; ++q) {
          const double t = std::tanh(Z[q]);
          if (want_s) S[q] = 1.0 - t * t;
          Z[q] = t;
        }
        break;
      case Activation::erf:
        for (Index q = 0; q < len; ++q) {
          const double z = Z[q];
          if (want_s) S[q] = kTwoOverSqrtPi * std::exp(-z * z);
          Z[q] = std::erf(z);
        }
        break;
      case Activation::linear:
        break;
    }
  }

  /// Linear activation: r = kappa X W^T u - y in f_, p in p_. Returns the loss; with
  /// `error`, also writes there the sign error of f on the training targets.
  double forward_linear(const double* y, double* error = nullptr) {
    Vec p(p_.data(), d_);
    p.noalias() = ConstMat(y + m_, m_, d_).transpose() * ConstVec(y, m_);
    Vec r(f_.data(), n_);
    r.noalias() = ConstMat(data_.x, n_, d_) * p;
    r *= net_.kappa;
    if (error) *error = sign_error(f_.data(), data_.y, n_);
    r -= ConstVec(data_.y, n_);
    return 0.5 * r.squaredNorm() / static_cast<double>(n_);
  }

  /// The network's outputs f(x) on the test inputs into out (n_test); uses hs_ (nonlinear)
  /// or p_ (linear) as scratch.
  void test_outputs(const double* y, double* out) {
    const ConstVec u(y, m_);
    Vec f(out, nt_);
    if (net_.act == Activation::linear) {
      Vec p(p_.data(), d_);
      p.noalias() = ConstMat(y + m_, m_, d_).transpose() * u;
      f.noalias() = ConstMat(kr_.test_x, nt_, d_) * p;
    } else {
      gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(nt_, m_, d_, kr_.test_x, d_, y + m_, d_,
                                                  hs_.data(), m_, 1.0, false);
      activate(hs_.data(), nullptr, nt_ * m_, false);
      f.noalias() = ConstMat(hs_.data(), nt_, m_) * u;
    }
    f *= net_.kappa;
  }

  /// test_loss, test_error and test_lin_gap at record slot `at` (after twin_at for it).
  void record_test(const double* y, Index at) {
    test_outputs(y, ft_.data());
    const ConstVec f(ft_.data(), nt_), yt(kr_.test_y, nt_);
    if (kr_.test_loss)
      kr_.test_loss[at] = 0.5 * (f - yt).squaredNorm() / static_cast<double>(nt_);
    if (kr_.test_error) kr_.test_error[at] = sign_error(ft_.data(), kr_.test_y, nt_);
    if (kr_.test_lin_gap) {
      const double gap = (f - ConstVec(ftl_.data(), nt_)).norm();
      kr_.test_lin_gap[at] = r0t_norm_ > 0 ? gap / r0t_norm_ : kNaN;
    }
  }

  /// Fraction of hidden units whose sign pattern on the data differs from t = 0 (Z in hs_).
  void record_pattern(Index at) {
    std::fill(changed_.begin(), changed_.end(), std::uint8_t{0});
    for (Index j = 0; j < n_; ++j) {
      const double* z = hs_.data() + j * m_;
      const std::uint8_t* p0 = pattern0_.data() + j * m_;
      for (Index i = 0; i < m_; ++i)
        changed_[i] |= static_cast<std::uint8_t>((z[i] > 0) != (p0[i] != 0));
    }
    Index count = 0;
    for (Index i = 0; i < m_; ++i) count += changed_[i];
    kr_.pattern_change[at] = static_cast<double>(count) / static_cast<double>(m_);
  }

  /// Kernel metrics of K_t (n x n, symmetric) against K_0. Every quantity is formed from
  /// K_t / max|K_t| and K_0 / max|K_0|: plain sums of squares overflow once Gram entries
  /// pass ~1e154 (and underflow below ~1e-154) while the run itself is still finite. The
  /// scalings divide: the reciprocal of a subnormal maximum would be inf.
  void record_metrics(const double* K, Index at) {
    const Index nn = n_ * n_;
    const Eigen::Map<const Eigen::VectorXd> kt(K, nn), k0(k0_.data(), nn);
    const double ct = kt.cwiseAbs().maxCoeff(), c0 = k0_max_;
    const double dt = ct > 0 ? ct : 1.0, d0 = c0 > 0 ? c0 : 1.0;  // all-zero: any divisor
    const double kt_norm = (kt / dt).norm();  // of K_t / ct; Eigen evaluates lazily
    const double dot0 = (kt / dt).dot(k0 / d0);
    const ConstVec yv(data_.y, n_);
    Vec ky(ky_.data(), n_);
    ky.noalias() = (ConstMat(K, n_, n_) / dt) * yv;
    const double yky = yv.dot(ky);
    const double k0_unit = k0_unit_;
    if (kr_.ntk_change) {
      // ||K_t - K_0|| / ||K_0|| with both scaled by the larger of ct, c0.
      const double c = std::max(ct, c0);  // > 0 where used: k0_unit > 0 means c0 > 0
      kr_.ntk_change[at] = k0_unit > 0 ? (kt / c - k0 / c).norm() / (k0_unit * (c0 / c))
                                       : kNaN;
    }
    if (kr_.kernel_distance) {
      const double den = kt_norm * k0_unit;
      kr_.kernel_distance[at] = den > 0 ? 1.0 - dot0 / den : kNaN;
    }
    if (kr_.kta) {
      const double den = kt_norm * y_norm2_;
      kr_.kta[at] = den > 0 ? yky / den : kNaN;
    }
  }

  /// loss_lin at every record time, from the initial state in y: the residual of the
  /// linearised network is V g(Lambda) V^T r0 with g = exp(-lambda t / n) (flow) or
  /// (1 - lr lambda / n)^t (descent, t = whole steps), exactly.
  void linearised_losses(const double* y) {
    const double loss0 =
        net_.act == Activation::linear ? forward_linear(y) : forward(y, false);
    (void)loss0;
    r0_norm_ = ConstVec(f_.data(), n_).norm();
    // Eigen's tridiagonalisation takes one n-vector from the heap: once per trajectory,
    // outside the time loop.
    eig_->compute(Eigen::Map<const Eigen::MatrixXd>(k0_.data(), n_, n_),
                  Eigen::ComputeEigenvectors);
    twin_ok_ = eig_->info() == Eigen::Success;
    if (!twin_ok_) {
      if (kr_.loss_lin)
        for (Index j = 0; j < T_; ++j) kr_.loss_lin[row_ * T_ + j] = kNaN;
      return;
    }
    // The projection of the initial residual on the eigenvectors: every later twin
    // prediction is a diagonal scaling of it (twin_at).
    coef_.noalias() = eig_->eigenvectors().transpose() * ConstVec(f_.data(), n_);
    if (!kr_.loss_lin) return;
    const Eigen::VectorXd& lam = eig_->eigenvalues();
    const double inv_n = 1.0 / static_cast<double>(n_);
    const bool gd = sched_.solver == Solver::gd;
    for (Index j = 0; j < T_; ++j) {
      const double t = sched_.times[j];
      double acc = 0.0;
      for (Index i = 0; i < n_; ++i) {
        const double l = std::max(lam[i], 0.0);  // K_0 is PSD; clip round-off below 0
        if (coef_[i] == 0.0) continue;  // an unstable mode with no residual adds 0, not inf*0
        const double g = gd ? std::pow(1.0 - sched_.lr * l * inv_n, t) : std::exp(-l * t * inv_n);
        acc += (g * coef_[i]) * (g * coef_[i]);
      }
      kr_.loss_lin[row_ * T_ + j] = 0.5 * acc * inv_n;
    }
  }

  /// The twin at record slot j: its training residual r_lin,t = V g V^T r_0 into twin_r_
  /// and, with a test set, its test outputs f_lin,t(X_test) = f_0(X_test) - K_0(X_test, X)
  /// V h V^T r_0 into ftl_ and their loss and error into the records. Per mode lambda
  /// (K_0 is PSD: round-off below 0 is clipped), with x = lambda t / n:
  ///   flow:    g = exp(-x),      h = (1 - exp(-x)) / lambda = (t / n) (-expm1(-x) / x)
  ///   descent: g = (1 - a)^t,    h = (lr / n) sum_{k<t} (1 - a)^k,  a = lr lambda / n
  /// written so that lambda -> 0 gives h = t / n (lr t / n) without dividing by zero.
  /// O(n^2 + n_test n), no allocation.
  void twin_at(Index j) {
    const Index at = row_ * T_ + j;
    if (!twin_ok_) {
      std::fill(twin_r_.begin(), twin_r_.end(), kNaN);
      if (plan_.test_lin) std::fill(ftl_.begin(), ftl_.end(), kNaN);
      if (kr_.test_loss_lin) kr_.test_loss_lin[at] = kNaN;
      if (kr_.test_error_lin) kr_.test_error_lin[at] = kNaN;
      return;
    }
    const Eigen::VectorXd& lam = eig_->eigenvalues();
    const double inv_n = 1.0 / static_cast<double>(n_);
    const bool gd = sched_.solver == Solver::gd;
    const double t = sched_.times[j];
    for (Index i = 0; i < n_; ++i) {
      double g = 0.0, h = 0.0;
      if (coef_[i] != 0.0) {  // an unstable mode with no residual adds 0, not inf * 0
        const double l = std::max(lam[i], 0.0);
        if (gd) {
          const double a = sched_.lr * l * inv_n;
          g = std::pow(1.0 - a, t);
          double s;  // sum_{k<t} (1 - a)^k
          if (a == 0.0)
            s = t;
          else if (a < 1.0)
            s = -std::expm1(t * std::log1p(-a)) / a;  // no cancellation for small a
          else
            s = (1.0 - g) / a;
          h = sched_.lr * inv_n * s;
        } else {
          const double x = l * t * inv_n;
          g = std::exp(-x);
          h = t * inv_n * (x > 0 ? -std::expm1(-x) / x : 1.0);
        }
      }
      twin_g_[i] = g * coef_[i];
      if (plan_.test_lin) twin_h_[i] = h * coef_[i];
    }
    const Eigen::MatrixXd& V = eig_->eigenvectors();
    Vec r(twin_r_.data(), n_);
    r.noalias() = V * ConstVec(twin_g_.data(), n_);
    if (!plan_.test_lin) return;
    Vec w(twin_w_.data(), n_);
    w.noalias() = V * ConstVec(twin_h_.data(), n_);
    Vec f(ftl_.data(), nt_);
    f = ConstVec(ft0_.data(), nt_);
    f.noalias() -= ConstMat(kx_.data(), nt_, n_) * w;
    const ConstVec yt(kr_.test_y, nt_);
    if (kr_.test_loss_lin)
      kr_.test_loss_lin[at] = 0.5 * (f - yt).squaredNorm() / static_cast<double>(nt_);
    if (kr_.test_error_lin) kr_.test_error_lin[at] = sign_error(ftl_.data(), kr_.test_y, nt_);
  }

  const Network net_;
  const LinearModel lm_;
  const TrainingData data_;
  const Schedule& sched_;
  const Records& out_;
  const KernelRecords& kr_;
  const Plan plan_;
  const Index n_, m_, d_, T_, g_, nt_;
  Index row_ = 0;
  std::optional<Recorder> rec_;
  NeuronRecorder neurons_;
  AlignedBuffer hs_, gs_;
  AlignedBuffer f_, p_, c_, M_, ky_;
  AlignedBuffer u0_, w0_, k0_, kt_;
  AlignedBuffer ft_, ft0_, ftl_, kx_;                  // test outputs, twin's, cross Gram
  AlignedBuffer twin_g_, twin_h_, twin_r_, twin_w_;    // twin coefficients and vectors
  std::vector<std::uint8_t> pattern0_, changed_;
  std::optional<Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>> eig_;
  Eigen::VectorXd coef_;
  Gemm gemm_;
  GramScratch gram_;
  double u0_norm_ = 0, w0_norm_ = 0, k0_unit_ = 0, k0_max_ = 0, y_norm2_ = 0;
  double r0_norm_ = 0, r0t_norm_ = 0;  // ||f_0 - y|| on the training and the test set
  bool twin_ok_ = false;
  // The piecewise (relu + dopri5) integration: pre-activations, P, the mode of every
  // (sample, unit) pair, the sliding pairs sorted by unit, scratch.
  const bool piecewise_;
  AlignedBuffer z_, on_, P_, scratch_, xnorm2_;
  std::vector<std::uint8_t> mode_;
  std::vector<Slide> slides_;
  struct Crossing {
    Index q;    // pair j m + i
    double at;  // fraction of the step
  };
  std::vector<Crossing> crossing_;  // the pairs crossing first in the current step
  std::vector<Index> switched_;     // pairs switched by update_modes
};

}  // namespace detail

void simulate_network(const Network& net, const TrainingData& data, const InitSpec& init,
                      const Schedule& sched, Index trajectories, const Records& out,
                      const KernelRecords& kernel, CancelToken* cancel) {
  if (net.width < 1 || net.dim < 1 || data.samples < 1 || trajectories < 0)
    throw std::invalid_argument("simulate_network: width, dim and samples must be >= 1");
  if (out.ntk && net.act != Activation::linear)
    throw std::invalid_argument("the (dim, dim) NTK record exists for the linear activation only");
  if (kernel.probe && kernel.n_probe < 1)
    throw std::invalid_argument("a probe set needs at least one input");
  if (kernel.test_x && (kernel.n_test < 1 || !kernel.test_y))
    throw std::invalid_argument("a test set needs at least one input and its targets");
  if (!kernel.test_x && (kernel.test_loss || kernel.test_error || kernel.test_loss_lin ||
                         kernel.test_error_lin || kernel.test_lin_gap))
    throw std::invalid_argument("test records need a test set");
  detail::run_ensemble<detail::NetworkThread>(net.width, net.dim, init, sched, trajectories,
                                              out, cancel, net, data, sched, out, kernel);
}

double piecewise_workspace_bytes(const Network& net, Index samples) {
  const double n = static_cast<double>(samples), m = static_cast<double>(net.width),
               d = static_cast<double>(net.dim);
  // z, relu' on the pieces, P, a field's scratch, ||x_j||^2; the modes (bytes); the sliding
  // pairs reserved up front (they grow past that only when more pairs slide at once).
  const double doubles = 2.0 * n * m + m * d + m * (1.0 + d) + n;
  const double slides = std::min(n * m, 4096.0) * (2.0 * sizeof(Index) + 2.0 * sizeof(double));
  return 8.0 * doubles + n * m + slides + 64.0 * sizeof(Index);
}

double network_workspace_bytes(const Network& net, Index samples, Index n_probe, bool gram,
                               bool metrics, bool linearized, bool pattern, bool move,
                               Index n_test) {
  const double n = static_cast<double>(samples), m = static_cast<double>(net.width),
               d = static_cast<double>(net.dim), np = static_cast<double>(n_probe),
               nt = static_cast<double>(n_test);
  const bool linear = net.act == Activation::linear;
  const bool any_gram = gram || metrics || linearized;
  double feat = linear ? 0.0 : n * m;
  if (any_gram) feat = std::max(feat, linear ? n * d : n * m);
  if (gram && n_probe > 0) feat = std::max(feat, linear ? np * d : np * m);
  const bool test_lin = linearized && n_test > 0;
  if (n_test > 0 && !linear) feat = std::max(feat, nt * m);
  if (test_lin) feat = std::max(feat, (linear ? d : m) * (nt + n));
  double doubles = (linear ? 1.0 : 2.0) * feat + n + 3.0 * d + d * d;
  doubles += 10.0 * m * (1.0 + d);  // state and integrator stages
  doubles += m * (1.0 + d);         // initial parameters
  doubles += 2.0 * m;               // per-neuron delta_i(0) and delta_i(t)
  if (move) doubles += m * (1.0 + d);  // their copy, the reference of move_u / move_w
  if (metrics || linearized) doubles += n * n;
  if (metrics) doubles += n * n;
  if (linearized) doubles += 2.0 * n * n + 4.0 * n;  // eigenvectors and work
  if (linearized) doubles += 2.0 * n;                // twin coefficients and residual
  if (n_test > 0) doubles += nt;                     // test outputs
  if (test_lin) doubles += nt * n + 2.0 * nt + 2.0 * n;  // cross Gram, twin's test outputs
  double bytes = 8.0 * doubles;
  if (pattern) bytes += n * m + m;
  // GEMM packing space, measured on the same reservations the thread makes.
  const bool probe_gram = gram && n_probe > 0;
  detail::Gemm gradient = detail::Gemm::meter();
  detail::reserve_gradient_gemm(gradient, samples, net.width, net.dim);
  detail::reserve_test_gemm(gradient, net, n_test);
  detail::GramScratch scratch;
  scratch.gemm = detail::Gemm::meter();
  if (any_gram) scratch.reserve_gemm(net, samples, samples);
  if (probe_gram) scratch.reserve_gemm(net, n_probe, n_probe);
  if (test_lin) scratch.reserve_gemm(net, n_test, samples);
  bytes += 8.0 * static_cast<double>(gradient.reserved_doubles() +
                                     scratch.gemm.reserved_doubles());
  if (any_gram || probe_gram || test_lin) bytes += detail::GramScratch::buffer_bytes(net);
  return bytes;
}

}  // namespace ntkflow
