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
  bool linearized = false;
  bool k0() const { return metrics || linearized; }
  bool any_gram() const { return metrics || train_gram || probe_gram || linearized; }

  Plan(const Network& net, const KernelRecords& kr) {
    metrics = kr.ntk_change || kr.kernel_distance || kr.kta;
    probe_gram = kr.gram && kr.probe;
    train_gram = kr.gram && !kr.probe;
    move = kr.move_u || kr.move_w;
    pattern = kr.pattern_change && net.act == Activation::relu;
    linearized = kr.loss_lin != nullptr;
  }
};

// GEMM packing space for every product shape of the gradient (also metered by
// network_workspace_bytes).
void reserve_gradient_gemm(Gemm& gemm, Index n, Index m, Index d) {
  gemm.reserve(n, m, d);  // Z = X W^T
  gemm.reserve(m, d, n);  // (diag(r) S)^T X
  gemm.reserve(d, d, m);  // W^T W
}

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
        neurons_(out, net.width, sched.n_times, net.eta_u, net.eta_w) {
    const bool linear = net.act == Activation::linear;
    // Feature buffers serve the gradient (Z/H and S/B, n x m) and the Gram features.
    Index feat = linear ? 0 : n_ * m_;
    if (plan_.any_gram()) feat = std::max(feat, gram_feature_size(net, n_));
    if (plan_.probe_gram) feat = std::max(feat, gram_feature_size(net, kr.n_probe));
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
    }
    reserve_gradient_gemm(gemm_, n_, m_, d_);
    if (plan_.any_gram()) gram_.reserve(net, n_, n_);
    if (plan_.probe_gram) gram_.reserve(net, kr.n_probe, kr.n_probe);
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
    if (plan_.linearized) linearised_losses(y);
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
    if (net_.act == Activation::linear) {
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
      loss = forward_linear(y);
    } else {
      pre_activation(y + m_);
      if (plan_.pattern) record_pattern(at);
      loss = forward(y, false, /*have_z=*/true);
    }
    Vec p(p_.data(), d_);
    p.noalias() = W.transpose() * u;
    gram_trace(y + m_);  // M = W^T W into M_
    rec_->write(j, p_.data(), u.squaredNorm(), M_.data(), loss);
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

  void fail_from(Index j) {
    rec_->fail_from(j);  // the common records and the parameters
    for (Index q = j; q < T_; ++q) {
      const Index at = row_ * T_ + q;
      for (double* rec : {kr_.ntk_change, kr_.kernel_distance, kr_.kta, kr_.move_u,
                          kr_.move_w, plan_.pattern ? kr_.pattern_change : nullptr})
        if (rec) rec[at] = kNaN;
      if (kr_.gram) std::fill(kr_.gram + at * g_ * g_, kr_.gram + (at + 1) * g_ * g_, kNaN);
    }
    // loss_lin stays: the linearised run depends on the initial state only.
  }

 private:
  /// M = W^T W into M_; returns its trace ||W||_F^2 (as the Recorder sums it).
  double gram_trace(const double* w) {
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, d_, m_, w, d_, w, d_, M_.data(), d_, 1.0,
                                                false);
    double tr = 0.0;
    for (Index a = 0; a < d_; ++a) tr += M_[a * d_ + a];
    return tr;
  }

  /// Z = X W^T into hs_ (n x m).
  void pre_activation(const double* w) {
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(n_, m_, d_, data_.x, d_, w, d_, hs_.data(), m_,
                                                1.0, false);
  }

  /// From Z (computed here unless have_z): H = act(Z) in hs_, S = act'(Z) in gs_ (when
  /// want_s), then r = kappa H u - y in f_. Returns the loss.
  double forward(const double* y, bool want_s, bool have_z = false) {
    if (!have_z) pre_activation(y + m_);
    double* Z = hs_.data();
    double* S = gs_.data();
    const Index len = n_ * m_;
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
    const ConstMat H(hs_.data(), n_, m_);
    Vec r(f_.data(), n_);
    r.noalias() = H * ConstVec(y, m_);
    r *= net_.kappa;
    r -= ConstVec(data_.y, n_);
    return 0.5 * r.squaredNorm() / static_cast<double>(n_);
  }

  /// Linear activation: r = kappa X W^T u - y in f_, p in p_. Returns the loss.
  double forward_linear(const double* y) {
    Vec p(p_.data(), d_);
    p.noalias() = ConstMat(y + m_, m_, d_).transpose() * ConstVec(y, m_);
    Vec r(f_.data(), n_);
    r.noalias() = ConstMat(data_.x, n_, d_) * p;
    r *= net_.kappa;
    r -= ConstVec(data_.y, n_);
    return 0.5 * r.squaredNorm() / static_cast<double>(n_);
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
    // Eigen's tridiagonalisation takes one n-vector from the heap: once per trajectory,
    // outside the time loop.
    eig_->compute(Eigen::Map<const Eigen::MatrixXd>(k0_.data(), n_, n_),
                  Eigen::ComputeEigenvectors);
    if (eig_->info() != Eigen::Success) {
      for (Index j = 0; j < T_; ++j) kr_.loss_lin[row_ * T_ + j] = kNaN;
      return;
    }
    coef_.noalias() = eig_->eigenvectors().transpose() * ConstVec(f_.data(), n_);
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

  const Network net_;
  const LinearModel lm_;
  const TrainingData data_;
  const Schedule& sched_;
  const Records& out_;
  const KernelRecords& kr_;
  const Plan plan_;
  const Index n_, m_, d_, T_, g_;
  Index row_ = 0;
  std::optional<Recorder> rec_;
  NeuronRecorder neurons_;
  AlignedBuffer hs_, gs_;
  AlignedBuffer f_, p_, c_, M_, ky_;
  AlignedBuffer u0_, w0_, k0_, kt_;
  std::vector<std::uint8_t> pattern0_, changed_;
  std::optional<Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>> eig_;
  Eigen::VectorXd coef_;
  Gemm gemm_;
  GramScratch gram_;
  double u0_norm_ = 0, w0_norm_ = 0, k0_unit_ = 0, k0_max_ = 0, y_norm2_ = 0;
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
  detail::run_ensemble<detail::NetworkThread>(net.width, net.dim, init, sched, trajectories,
                                              out, cancel, net, data, sched, out, kernel);
}

double network_workspace_bytes(const Network& net, Index samples, Index n_probe, bool gram,
                               bool metrics, bool linearized, bool pattern, bool move) {
  const double n = static_cast<double>(samples), m = static_cast<double>(net.width),
               d = static_cast<double>(net.dim), np = static_cast<double>(n_probe);
  const bool linear = net.act == Activation::linear;
  const bool any_gram = gram || metrics || linearized;
  double feat = linear ? 0.0 : n * m;
  if (any_gram) feat = std::max(feat, linear ? n * d : n * m);
  if (gram && n_probe > 0) feat = std::max(feat, linear ? np * d : np * m);
  double doubles = (linear ? 1.0 : 2.0) * feat + n + 3.0 * d + d * d;
  doubles += 10.0 * m * (1.0 + d);  // state and integrator stages
  doubles += m * (1.0 + d);         // initial parameters
  doubles += 2.0 * m;               // per-neuron delta_i(0) and delta_i(t)
  if (move) doubles += m * (1.0 + d);  // their copy, the reference of move_u / move_w
  if (metrics || linearized) doubles += n * n;
  if (metrics) doubles += n * n;
  if (linearized) doubles += 2.0 * n * n + 4.0 * n;  // eigenvectors and work
  double bytes = 8.0 * doubles;
  if (pattern) bytes += n * m + m;
  // GEMM packing space, measured on the same reservations the thread makes.
  const bool probe_gram = gram && n_probe > 0;
  detail::Gemm gradient = detail::Gemm::meter();
  detail::reserve_gradient_gemm(gradient, samples, net.width, net.dim);
  detail::GramScratch scratch;
  scratch.gemm = detail::Gemm::meter();
  if (any_gram) scratch.reserve_gemm(net, samples, samples);
  if (probe_gram) scratch.reserve_gemm(net, n_probe, n_probe);
  bytes += 8.0 * static_cast<double>(gradient.reserved_doubles() +
                                     scratch.gemm.reserved_doubles());
  if (any_gram || probe_gram) bytes += detail::GramScratch::buffer_bytes(net);
  return bytes;
}

}  // namespace ntkflow
