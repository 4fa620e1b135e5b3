// Two-layer networks with an activation on a dataset: gradient flow / descent / minibatch
// SGD of the full m(c + d) parameters, with the records of the linear path plus the kernel
// records (Gram matrices, kernel metrics, parameter movement, relu pattern changes,
// linearised run, held-out set).
//
// Gradient of L = (1/n) sum_j l(F_j, Y_j), F = kappa act(X W^T) U (n x c), by matrix
// products only (no per-parameter Jacobian): with Z = X W^T (n x m), H = act(Z),
// S = act'(Z) and R = dl/dF (n x c),
//   dL/dU = kappa/n H^T R,     dL/dW = kappa/n (S o (R U^T))^T X
// (for c = 1: kappa/n diag(u) (diag(r) S)^T X). Two GEMMs of n m d each per evaluation;
// everything else is O(n m c). Weight decay adds lambda_u U and lambda_w W.
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include "ensemble.hpp"
#include "gemm.hpp"
#include "gram.hpp"
#include "nonlinear_stiff.hpp"
#include "relu_kernels.hpp"
#include "ntkflow/nonlinear.hpp"
#include "ntkflow/philox.hpp"
#include "rosenbrock.hpp"

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
void reserve_gradient_gemm(Gemm& gemm, const Network& net, Index n) {
  const Index m = net.width, d = net.dim, c = net.outputs;
  gemm.reserve(n, m, d);  // Z = X W^T
  gemm.reserve(m, d, n);  // (S o E)^T X
  gemm.reserve(d, d, m);  // W^T W
  if (c == 1) {
    gemm.reserve(d, m, n);  // dW^T = X^T B (field_fused)
    return;                 // the rest are matrix-vector products
  }
  gemm.reserve(n, c, m);  // F = H U
  gemm.reserve(m, c, n);  // H^T R
  gemm.reserve(n, m, c);  // E = R U^T
  gemm.reserve(d, c, m);  // P = W^T U
  gemm.reserve(n, c, d);  // linear: F = X P
  gemm.reserve(d, c, n);  // linear: X^T R
  gemm.reserve(m, c, d);  // linear: W C
  gemm.reserve(m, d, c);  // linear: U C^T
}

// The same for the network's outputs on n_test test inputs (Z = X_test W^T, F = H U).
void reserve_test_gemm(Gemm& gemm, const Network& net, Index n_test) {
  if (n_test <= 0) return;
  if (net.act != Activation::linear) gemm.reserve(n_test, net.width, net.dim);
  if (net.outputs > 1) {
    gemm.reserve(n_test, net.outputs, net.width);
    gemm.reserve(n_test, net.outputs, net.dim);
  }
}

/// Fraction of f (n) whose sign differs from the +-1 target y; f = 0 (and NaN) counts as
/// an error, as sign(0) = 0 matches neither label.
double sign_error(const double* f, const double* y, Index n) {
  Index wrong = 0;
  for (Index j = 0; j < n; ++j) wrong += (y[j] > 0 ? !(f[j] > 0) : !(f[j] < 0)) ? 1 : 0;
  return static_cast<double>(wrong) / static_cast<double>(n);
}

/// Classification error of outputs F (rows x c) against targets Y: the sign error for one
/// output, else the fraction of rows whose argmax differs from the target's (a NaN output
/// counts as an error).
double class_error(const double* F, const double* Y, Index rows, Index c) {
  if (c == 1) return sign_error(F, Y, rows);
  Index wrong = 0;
  for (Index j = 0; j < rows; ++j) {
    const double* f = F + j * c;
    const double* y = Y + j * c;
    Index af = 0, ay = 0;
    bool nan = std::isnan(f[0]);
    for (Index a = 1; a < c; ++a) {
      nan = nan || std::isnan(f[a]);
      if (f[a] > f[af]) af = a;
      if (y[a] > y[ay]) ay = a;
    }
    wrong += (nan || af != ay) ? 1 : 0;
  }
  return static_cast<double>(wrong) / static_cast<double>(rows);
}

/// Turns the outputs F (rows x c) into R = dl/dF in place and returns the mean loss
/// (1/rows) sum_j l(F_j, Y_j), evaluated without overflow for any finite F.
double loss_and_slope(Loss loss, double* F, const double* Y, Index rows, Index c) {
  const double inv = 1.0 / static_cast<double>(rows);
  switch (loss) {
    case Loss::logistic: {  // c = 1, Y = +-1: l = log(1 + e^-z), z = y f
      double sum = 0.0;
      for (Index j = 0; j < rows; ++j) {
        const double z = Y[j] * F[j];
        const double e = std::exp(-std::abs(z));
        sum += std::max(-z, 0.0) + std::log1p(e);
        const double sig = z >= 0 ? e / (1.0 + e) : 1.0 / (1.0 + e);  // sigmoid(-z)
        F[j] = std::isnan(z) ? z : -Y[j] * sig;
      }
      return sum * inv;
    }
    case Loss::softmax: {  // l = logsumexp(f) - y . f for y on the simplex
      double sum = 0.0;
      for (Index j = 0; j < rows; ++j) {
        double* f = F + j * c;
        const double* y = Y + j * c;
        double top = f[0];
        for (Index a = 1; a < c; ++a) top = std::max(top, f[a]);
        if (!std::isfinite(top)) top = 0.0;  // inf / NaN outputs: let them propagate
        double z = 0.0;
        for (Index a = 0; a < c; ++a) z += std::exp(f[a] - top);
        const double lse = top + std::log(z);
        for (Index a = 0; a < c; ++a) {
          if (y[a] != 0.0) sum += y[a] * (lse - f[a]);
          f[a] = std::exp(f[a] - top) / z - y[a];
        }
      }
      return sum * inv;
    }
    case Loss::square:
      break;
  }
  Vec r(F, rows * c);
  r -= ConstVec(Y, rows * c);
  return 0.5 * r.squaredNorm() / static_cast<double>(rows);
}

/// relu's field jumps where a pre-activation crosses 0; the adaptive solver then integrates
/// it piece by piece (docs/theory.md §H). Fixed steps and descent step across as they are.
bool is_piecewise(const Network& net, const Schedule& sched) {
  return net.act == Activation::relu && sched.solver == Solver::dopri5 && net.eta_w > 0;
}

/// One output and an activation whose derivative is a function of its value (relu:
/// [h > 0], tanh: 1 - h^2): field_smooth takes the two-pass path (field_fused).
bool has_fused_field(const Network& net) {
  return net.outputs == 1 && (net.act == Activation::relu || net.act == Activation::tanh);
}

/// Whether field_fused runs relu_kernels.hpp's kernels: relu, one output, a small input
/// dimension, and a build for AVX-512.
bool uses_relu_kernels(const Network& net) {
#ifdef NTKFLOW_RELU_KERNELS
  return has_fused_field(net) && net.act == Activation::relu && net.dim <= kReluKernelMaxDim;
#else
  (void)net;
  return false;
#endif
}

/// rodas4 and auto integrate smooth activations under gradient flow on the full batch;
/// relu's piecewise field stays with dopri5, which locates its switches.
bool stiff_applies(const Network& net, const TrainingData& data, const Schedule& sched) {
  return (sched.solver == Solver::rodas4 || sched.solver == Solver::automatic) &&
         net.act != Activation::relu && data.batch == 0 &&
         data.samples * net.outputs <= kStiffMaxRows;
}

// Modes of a (sample, unit) pair under the piecewise integration.
constexpr std::uint8_t kOff = 0;    // w_i . x_j < 0: relu and relu' are 0
constexpr std::uint8_t kOn = 1;     // w_i . x_j > 0: relu = z, relu' = 1
constexpr std::uint8_t kSlide = 2;  // sliding on w_i . x_j = 0 (Filippov equivalent control)
constexpr std::uint8_t kOrigin = 3;  // d = 1: unit within atol of w_i = 0, decided whole
// Crossings closer than this fraction of a step to the first are handled as one event.
constexpr double kTogether = 1e-9;
// Sweeps of the coordinate descent for the controls of several sliding pairs of one unit.
constexpr int kSweeps = 500;

LinearModel recorder_model(const Network& net) {
  LinearModel lm;  // only the fields the Recorder reads when writing
  lm.width = net.width;
  lm.dim = net.dim;
  lm.outputs = net.outputs;
  lm.kappa = net.kappa;
  lm.eta_u = net.eta_u;
  lm.eta_w = net.eta_w;
  return lm;
}

// Key of the minibatch streams: the seed's, changed, so that they never meet the
// initialisation's (Philox(seed, trajectory)).
constexpr std::uint64_t kSgdKey = 0x53474431;  // "SGD1"

/// The high 64 bits of a * b, portably.
std::uint64_t mulhi64(std::uint64_t a, std::uint64_t b) {
  const std::uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
  const std::uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const std::uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
  return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/// The batch of (seed, trajectory, step) into out (see sgd_batch in nonlinear.hpp). perm
/// holds the identity 0..n-1 on entry and on return (the partial shuffle is undone).
void draw_batch(std::uint64_t seed, std::uint64_t trajectory, std::int64_t step, Index n,
                Index batch, bool replace, Index* perm, Index* out) {
  const Philox rng(seed ^ kSgdKey, trajectory);
  const std::uint64_t base = static_cast<std::uint64_t>(step) << 32;
  std::array<std::uint32_t, 4> w{};
  for (Index t = 0; t < batch; ++t) {
    const auto ut = static_cast<std::uint64_t>(t);
    if ((ut & 1) == 0) w = rng.block(base | (ut >> 1));
    const std::uint64_t v = (ut & 1) == 0 ? (std::uint64_t{w[0]} << 32) | w[1]
                                          : (std::uint64_t{w[2]} << 32) | w[3];
    if (replace) {
      out[t] = static_cast<Index>(mulhi64(v, static_cast<std::uint64_t>(n)));
    } else {
      const Index r = t + static_cast<Index>(mulhi64(v, static_cast<std::uint64_t>(n - t)));
      std::swap(perm[t], perm[r]);
      out[t] = r;  // the swap, undone below
    }
  }
  if (replace) return;
  for (Index t = batch - 1; t >= 0; --t) {
    const Index r = out[t];
    out[t] = perm[t];
    std::swap(perm[t], perm[r]);
  }
}

}  // namespace

/// Everything one thread needs, sized once; it is also the System of the trajectory it is
/// running (start() loads one). State y = [U (m x c), W (m x d)], both row-major.
class NetworkThread {
 public:
  NetworkThread(const Network& net, const TrainingData& data, const Schedule& sched,
                const Records& out, const KernelRecords& kr, const InitSpec& init)
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
        c_(net.outputs),
        wo_(net.width * net.outputs),
        nc_(data.samples * net.outputs),
        T_(sched.n_times),
        g_((plan_.probe_gram ? kr.n_probe : n_) * net.outputs),
        nt_(plan_.test ? kr.n_test : 0),
        neurons_(out, net.width, sched.n_times, net.eta_u, net.eta_w),
        piecewise_(is_piecewise(net, sched)),
        line_(piecewise_ && net.dim == 1),
        sgd_(data.batch > 0 && sched.solver == Solver::gd),
        stepped_twin_(sgd_ && plan_.linearized),
        seed_(init.seed),
        first_(init.first_trajectory) {
    const bool linear = net.act == Activation::linear;
    const bool multi = c_ > 1;
    // Rows a field evaluation sees: the samples, or a minibatch, which may be larger when
    // drawn with replacement.
    const Index rows = sgd_ ? std::max(n_, data.batch) : n_;
    // Feature buffers serve the gradient (Z/H and S/B, rows x m) and the Gram features.
    Index feat = linear ? 0 : rows * m_;
    if (!multi) {
      if (plan_.any_gram()) feat = std::max(feat, gram_feature_size(net, n_));
      if (plan_.probe_gram) feat = std::max(feat, gram_feature_size(net, kr.n_probe));
      if (plan_.test_lin)  // features of both sides of the cross Gram K_0(X_test, X)
        feat = std::max(feat, gram_feature_size(net, nt_) + gram_feature_size(net, n_));
    }
    if (plan_.test && !linear) feat = std::max(feat, nt_ * m_);  // test pre-activations
    hs_.resize(static_cast<std::size_t>(feat));
    // gs_ also holds field_fused's dW^T (d x m) and packed W^T (d x m rounded up to whole
    // panels), larger than rows x m when rows < d.
    gs_.resize(static_cast<std::size_t>(
        linear ? 0 : std::max(feat, d_ * relu_padded_width(m_))));
    if ((multi && !linear) || is_piecewise(net, sched))
      e_.resize(static_cast<std::size_t>(rows * m_));
    if (uses_relu_kernels(net)) {  // H in panels, padded to whole panels; diag(R) X
      hs_.resize(std::max(hs_.size(), static_cast<std::size_t>(rows * relu_padded_width(m_))));
      xr_.resize(static_cast<std::size_t>(rows * d_));
    }
    f_.resize(static_cast<std::size_t>(rows * c_));
    ky_.resize(static_cast<std::size_t>(nc_));
    p_.resize(static_cast<std::size_t>(d_ * c_));
    cv_.resize(static_cast<std::size_t>(d_ * c_));
    M_.resize(static_cast<std::size_t>(d_ * d_));
    if (plan_.move) {
      u0_.resize(static_cast<std::size_t>(wo_));
      w0_.resize(static_cast<std::size_t>(m_ * d_));
    }
    if (plan_.pattern) {
      pattern0_.resize(static_cast<std::size_t>(n_ * m_));
      changed_.resize(static_cast<std::size_t>(m_));
    }
    if (plan_.k0()) k0_.resize(static_cast<std::size_t>(nc_ * nc_));
    if (plan_.metrics && !plan_.train_gram) kt_.resize(static_cast<std::size_t>(nc_ * nc_));
    if (plan_.linearized) {
      twin_r_.resize(static_cast<std::size_t>(nc_));
      if (stepped_twin_) {
        twin_s_.resize(static_cast<std::size_t>(data.batch * c_));
        twin_q_.resize(static_cast<std::size_t>(data.batch * c_));
      } else {
        eig_.emplace(nc_);  // preallocates its (n c) x (n c) storage
        coef_.resize(nc_);
        twin_g_.resize(static_cast<std::size_t>(nc_));
      }
    }
    if (plan_.test) {
      ft_.resize(static_cast<std::size_t>(nt_ * c_));
      fts_.resize(static_cast<std::size_t>(nt_ * c_));
    }
    if (plan_.test_lin) {
      ft0_.resize(static_cast<std::size_t>(nt_ * c_));
      ftl_.resize(static_cast<std::size_t>(nt_ * c_));
      kx_.resize(static_cast<std::size_t>(nt_ * c_ * nc_));
      if (!stepped_twin_) {
        twin_h_.resize(static_cast<std::size_t>(nc_));
        twin_w_.resize(static_cast<std::size_t>(nc_));
      }
    }
    if (piecewise_) {
      z_.resize(static_cast<std::size_t>(n_ * m_));
      on_.resize(static_cast<std::size_t>(n_ * m_));
      P_.resize(static_cast<std::size_t>(m_ * d_));
      scratch_.resize(static_cast<std::size_t>(m_ * (c_ + d_)));
      mode_.resize(static_cast<std::size_t>(n_ * m_));
      slides_.reserve(static_cast<std::size_t>(std::min<Index>(n_ * m_, 4096)));
      crossing_.reserve(64);
      switched_.reserve(64);
      if (line_) {
        origin_.reserve(static_cast<std::size_t>(m_));
        units_.reserve(static_cast<std::size_t>(m_));
      }
      xnorm2_.resize(static_cast<std::size_t>(n_));
      for (Index j = 0; j < n_; ++j)
        xnorm2_[j] = ConstVec(data.x + j * d_, d_).squaredNorm();
    }
    if (sgd_) {
      const Index b = data.batch;
      xb_.resize(static_cast<std::size_t>(b * d_));
      yb_.resize(static_cast<std::size_t>(b * c_));
      idx_.resize(static_cast<std::size_t>(b));
      perm_.resize(static_cast<std::size_t>(n_));
      for (Index j = 0; j < n_; ++j) perm_[j] = j;
    }
    reserve_gradient_gemm(gemm_, net, rows);
    if (plan_.test) reserve_test_gemm(gemm_, net, nt_);
    if (multi) {
      if (plan_.any_gram()) ogram_.reserve(net, n_, n_);
      if (plan_.probe_gram) ogram_.reserve(net, kr.n_probe, kr.n_probe);
      if (plan_.test_lin) ogram_.reserve(net, nt_, n_);
    } else {
      if (plan_.any_gram()) gram_.reserve(net, n_, n_);
      if (plan_.probe_gram) gram_.reserve(net, kr.n_probe, kr.n_probe);
      if (plan_.test_lin) gram_.reserve(net, nt_, n_);
    }
    y_norm2_ = ConstVec(data.y, nc_).squaredNorm();
    if (stiff_applies(net, data, sched)) stiff_.emplace(net, data.x, data.y, n_);
  }

  Index state_size() const { return m_ * (c_ + d_); }

  NetworkThread& start(Index k, const double* u, const double* w, double* y) {
    row_ = k;
    rec_.emplace(lm_, out_, k, T_);
    std::copy(u, u + wo_, y);
    std::copy(w, w + m_ * d_, y + wo_);
    const ConstVec uu(u, wo_);
    const ConstMat W(w, m_, d_);
    rec_->set_reference(uu.squaredNorm(), gram_trace(w));
    neurons_.reference(contiguous_neurons(u, w, d_, c_));
    if (plan_.move) {
      std::copy(u, u + wo_, u0_.begin());
      std::copy(w, w + m_ * d_, w0_.begin());
      u0_norm_ = uu.norm();
      w0_norm_ = W.norm();
    }
    if (plan_.pattern) {
      pre_activation(w);
      for (Index q = 0; q < n_ * m_; ++q) pattern0_[q] = hs_[q] > 0 ? 1 : 0;
    }
    if (plan_.k0()) {
      gram(u, w, data_.x, n_, nullptr, 0, k0_.data());
      const Eigen::Map<const Eigen::VectorXd> k0(k0_.data(), nc_ * nc_);
      k0_max_ = k0.cwiseAbs().maxCoeff();
      k0_unit_ = k0_max_ > 0 ? (k0 / k0_max_).norm() : 0.0;  // ||K_0|| / max|K_0|
    }
    if (plan_.test_lin) {
      // K_0(X_test, X) (n_test c x n c) and f_0 on the test set, once per trajectory.
      gram(u, w, kr_.test_x, nt_, data_.x, n_, kx_.data());
      test_outputs(y, ft0_.data());
      Vec r0t(ftl_.data(), nt_ * c_);  // scratch: the test residual at t = 0
      r0t = ConstVec(ft0_.data(), nt_ * c_) - ConstVec(kr_.test_y, nt_ * c_);
      r0t_norm_ = r0t.norm();
    }
    if (plan_.linearized) {
      if (stepped_twin_)
        start_stepped_twin(y);
      else
        linearised_losses(y);
    }
    if (piecewise_) {
      pre_activation(w);
      for (Index q = 0; q < n_ * m_; ++q) set_mode(q, hs_[q] > 0 ? kOn : kOff);
      slides_.clear();
      // A unit that starts at w_i = 0 in one dimension starts at the origin: it leaves
      // when a side's field points away (without it, all its pairs off, it never would).
      origin_.clear();
      if (line_)
        for (Index i = 0; i < m_; ++i)
          if (w[i] == 0.0) enter_origin(i);
    }
    view_ = View{data_.x, data_.y, n_};
    if (stiff_) stiff_->reset();
    rate_calls_ = 0;
    rate_ = 0.0;
    return *this;
  }

  // ---- the System interface of integrate.hpp ----
  Index size() const { return m_ * (c_ + d_); }

  /// The minibatch of a descent step (has_minibatch): its inputs and noisy targets become
  /// the data of the next field evaluation. Records always use the whole training set.
  /// The stepped twin first takes the batch the network has just stepped on, so that both
  /// have taken the same `step` batches at every record.
  void minibatch(std::int64_t step) {
    if (!sgd_) return;
    if (stepped_twin_) advance_twin(step);
    draw_step(step);
    twin_pending_ = stepped_twin_;
    view_ = View{xb_.data(), yb_.data(), data_.batch};
  }

  /// The batch of `step` into idx_, its inputs into xb_ and its noisy targets into yb_.
  void draw_step(std::int64_t step) {
    const Index b = data_.batch;
    const auto traj = static_cast<std::uint64_t>(first_ + row_);
    draw_batch(seed_, traj, step, n_, b, data_.replace, perm_.data(), idx_.data());
    for (Index t = 0; t < b; ++t) {
      const Index j = idx_[t];
      std::copy(data_.x + j * d_, data_.x + (j + 1) * d_, xb_.data() + t * d_);
      std::copy(data_.y + j * c_, data_.y + (j + 1) * c_, yb_.data() + t * c_);
    }
    if (data_.label_noise > 0) {
      const Philox rng(seed_ ^ kSgdKey, traj);
      const std::uint64_t base = (static_cast<std::uint64_t>(step) << 32) | 0x80000000u;
      // One Box-Muller pair for two targets (normals 2k and 2k + 1 of block 2^31 + k).
      const Index count = b * c_;
      for (Index q = 0; q < count; q += 2) {
        const auto z = rng.normal_pair(base + (static_cast<std::uint64_t>(q) >> 1));
        yb_[q] += data_.label_noise * z[0];
        if (q + 1 < count) yb_[q + 1] += data_.label_noise * z[1];
      }
    }
  }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    double loss;
    if (piecewise_) {
      loss = field_piecewise(y, dy);
    } else if (net_.act == Activation::linear) {
      loss = field_linear(y, dy);
    } else {
      loss = field_smooth(y, dy);
    }
    if (net_.lambda_u > 0) Vec(dy, wo_) -= (net_.eta_u * net_.lambda_u) * ConstVec(y, wo_);
    if (net_.lambda_w > 0 && !piecewise_)  // piecewise folds it into P (sliding controls)
      Vec(dy + wo_, m_ * d_) -= (net_.eta_w * net_.lambda_w) * ConstVec(y + wo_, m_ * d_);
    if (want_dloss) *dl = loss_rate(y, dy);
    // A saturating activation can keep the loss finite while the weights run off to 1e173:
    // the records (||W||^2, the NTK) would overflow under an "ok" status. Such a state
    // counts as diverged, like a non-finite loss.
    if (std::isfinite(loss)) {
      const double a = ConstVec(y, wo_).squaredNorm();
      const double b = ConstVec(y + wo_, m_ * d_).squaredNorm();
      const double k2 = net_.kappa * net_.kappa;
      if (!std::isfinite(k2 * (1.0 + net_.eta_u + net_.eta_w) * (a + b)))
        return std::numeric_limits<double>::infinity();
    }
    return loss;
  }

  // ---- the hooks of integrate_rodas4 and of the hand-over (nonlinear_stiff.hpp) ----

  /// W = cc I - J(y), J the exact Jacobian of field() (full batch, decay included).
  bool factor(const double* y, double cc) {
    double* f = stiff_->forward(y, true);
    loss_and_slope(net_.loss, f, data_.y, n_, c_);
    return stiff_->factor(cc);
  }

  void solve(double* r) { stiff_->solve(r); }

  /// The largest decay rate of the Gauss-Newton part of the flow at y (StiffSwitch).
  double stiff_rate(const double* y) {
    if (!stiff_) return 0.0;
    if (rate_calls_++ % kRateEvery != 0) return rate_;
    double* f = stiff_->forward(y, false);
    loss_and_slope(net_.loss, f, data_.y, n_, c_);
    rate_ = stiff_->rate();
    return rate_;
  }

  void record(const double* y, Index j) {
    const ConstVec u(y, wo_);
    const ConstMat W(y + wo_, m_, d_);
    const Index at = row_ * T_ + j;
    const View all{data_.x, data_.y, n_};
    double* error = kr_.error ? kr_.error + at : nullptr;
    double loss;
    if (net_.act == Activation::linear) {
      loss = forward_linear(y, all, error);  // also P = W^T U into p_
    } else {
      pre_activation(y + wo_);
      if (plan_.pattern) record_pattern(at);
      loss = forward(y, all, false, /*have_z=*/true, error);
      end_to_end(y);
    }
    gram_trace(y + wo_);  // M = W^T W into M_
    rec_->write(j, p_.data(), u.squaredNorm(), M_.data(), loss);
    if (plan_.linearized) {
      if (stepped_twin_)
        stepped_twin_records(j);
      else
        twin_at(j);
      if (kr_.lin_gap) {  // f_ still holds r_t = f_t(X) - y
        const double gap = (ConstVec(f_.data(), nc_) - ConstVec(twin_r_.data(), nc_)).norm();
        kr_.lin_gap[at] = r0_norm_ > 0 ? gap / r0_norm_ : kNaN;
      }
    }
    if (plan_.test) record_test(y, at);
    neurons_.write(row_, j, contiguous_neurons(y, y + wo_, d_, c_));
    if (plan_.move) {
      const ConstVec u0(u0_.data(), wo_);
      const ConstMat W0(w0_.data(), m_, d_);
      if (kr_.move_u) kr_.move_u[at] = u0_norm_ > 0 ? (u - u0).norm() / u0_norm_ : kNaN;
      if (kr_.move_w) kr_.move_w[at] = w0_norm_ > 0 ? (W - W0).norm() / w0_norm_ : kNaN;
    }
    if (plan_.train_gram || plan_.metrics) {
      double* K = plan_.train_gram ? kr_.gram + at * nc_ * nc_ : kt_.data();
      gram(y, y + wo_, data_.x, n_, nullptr, 0, K);
      if (plan_.metrics) record_metrics(K, at);
    }
    if (plan_.probe_gram)
      gram(y, y + wo_, kr_.probe, kr_.n_probe, nullptr, 0, kr_.gram + at * g_ * g_);
  }

  void record_params(const double* y, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(y, y + wo_, out_.u + at * wo_);
    if (out_.w) std::copy(y + wo_, y + wo_ + m_ * d_, out_.w + at * m_ * d_);
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
        if (mode_[q] >= kSlide || inside(mode_[q], z_[q])) continue;
        double c[5] = {0, 0, 0, 0, 0}, ck[5];
        for (Index k = 0; k < d_; ++k) {
          ds.coeffs(wo_ + i * d_ + k, ck);
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
  /// piece switch (to the other side, or to sliding when both sides push into the surface),
  /// sliding pairs that the flow has carried off their surface leave it; in one dimension
  /// a unit reaching the origin goes to mode kOrigin, and leaves it once carried off.
  /// `fresh`: the last field evaluation was at y. May set a unit held at the origin to
  /// exactly w_i = 0 in y. True when the field at y changed.
  bool update_modes(double* y, bool fresh) {
    if (!piecewise_) return false;
    switched_.clear();
    if (!fresh) field_piecewise(y, scratch_.data());  // z, E and the controls at y
    leave_surfaces();
    const bool left = leave_origin(y);
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
    const std::size_t located = switched_.size();
    repair_modes(located);
    if (switched_.empty()) return left;
    field_piecewise(y, scratch_.data());  // P and E on the new pattern, for the side test
    if (line_)
      origin_sides(y, located);
    else
      pair_sides();
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
      // (loss_lin is written in start(); its test loss and error are written here), and
      // for SGD on batches that are drawn whether or not the network still steps.
      if (stepped_twin_) {
        advance_twin(std::llround(sched_.times[q]));
        stepped_twin_records(q);
      } else if (plan_.test_lin) {
        twin_at(q);
      }
    }
  }

 private:
  /// The data a field evaluation sees: the training set, or a step's minibatch.
  struct View {
    const double* x;  // (rows, d)
    const double* y;  // (rows, c)
    Index rows;
  };

  struct Slide {
    Index j, i;       // sample, unit
    double beta = 0;  // alpha_j e_ij, alpha_j in [0, 1] the control: its term in P_i
  };

  static bool inside(std::uint8_t mode, double z) { return mode == kOn ? z > 0 : z <= 0; }

  /// Sliding pairs that the flow has carried off their surface leave it.
  void leave_surfaces() {
    for (std::size_t s = 0; s < slides_.size();) {
      const Slide& sl = slides_[s];
      const double z = z_[sl.j * m_ + sl.i];
      // A pair leaves its surface once the flow has carried z off it by more than the
      // absolute tolerance of the weights, with its control on the bound of that side
      // (alpha = 1 above, 0 below): the sliding field then equals that side's field, so
      // the exit is tangential and needs no event. Rounding noise (a unit pinned at w = 0
      // by more surfaces than dimensions) stays below the threshold.
      const double off = sched_.atol * std::sqrt(xnorm2_[sl.j]);
      const double e = e_[sl.j * m_ + sl.i];
      const double alpha = e != 0 ? sl.beta / e : 0.5;
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
  }

  /// Pairs found outside their piece without a located crossing (a crossing and a return
  /// within one step's rounding) move by the sign of z. `located`: the crossings at the
  /// front of switched_.
  void repair_modes(std::size_t located) {
    for (Index q = 0; q < n_ * m_; ++q) {
      if (q % m_ == 0 && !row_outside(q / m_)) {
        q += m_ - 1;
        continue;
      }
      if (mode_[q] >= kSlide || inside(mode_[q], z_[q])) continue;
      if (std::find(switched_.begin(), switched_.begin() + static_cast<std::ptrdiff_t>(located),
                    q) != switched_.begin() + static_cast<std::ptrdiff_t>(located))
        continue;
      set_mode(q, z_[q] > 0 ? kOn : kOff);
      switched_.push_back(q);
    }
  }

  /// The side of each switched pair on its surface (two or more dimensions), from the
  /// field of the new pattern: d(w_i . x_j)/dt up to the factor eta_w kappa / n > 0 is
  /// dz_off without the pair and dz_on with it (e_ij = R_j . U_i). Both push into the
  /// surface: it slides. Both push one way (or one is tangential, = 0): it takes that side,
  /// whatever z rounds to, so that no step starts on a side its own field leaves at once
  /// (such a pair is not watched for crossings: it would run a whole step on the wrong
  /// piece). Both push away: it keeps the side it was crossing to. A pair found well off
  /// its surface (a repair, |z| > atol |x_j|) keeps the side of z and never slides.
  void pair_sides() {
    for (const Index q : switched_) {
      const Index j = q / m_, i = q % m_;
      if (std::abs(z_[q]) > sched_.atol * std::sqrt(xnorm2_[j])) continue;
      const ConstVec x(data_.x + j * d_, d_);
      const double e = e_[q];
      double pj = x.dot(ConstVec(P_.data() + i * d_, d_));
      if (mode_[q] == kOn) pj -= e * xnorm2_[j];
      const double dz_off = -pj;
      const double dz_on = dz_off - e * xnorm2_[j];
      if (dz_on < 0 && dz_off > 0)
        add_slide(j, i);
      else if (dz_on <= 0 && dz_off <= 0)
        set_mode(q, kOff);
      else if (dz_on >= 0 && dz_off >= 0)
        set_mode(q, kOn);
    }
  }

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

  // ---- one dimension: a unit at the origin (docs/theory.md §H) ----
  //
  // With d = 1 all n surfaces of unit i are w_i = 0, and only two regions meet there:
  // w_i > 0, where the inputs x_j > 0 are on, and w_i < 0, where the x_j < 0 are. Filippov's
  // set at the origin is the segment between their fields v+ and v-. The per-pair box of
  // the sliding controls relaxes it to every on/off combination of the inputs, most of them
  // fields of no region (all x_j > 0 switch together): with both fields pointing into the
  // origin, the pairs flipped, each pair's test sent the unit back, and the solver
  // chattered with an event per step. So in one dimension a unit reaching the origin is
  // decided whole, in mode kOrigin: its field is the side origin_side picks, recomputed at
  // every evaluation, 0 while both fields point inward (0 is in the segment), and it
  // leaves the mode at a step end once that field has carried it off by more than atol.

  /// Unit i's one-sided sums g+- = sum_{x_j >< 0} e_ji x_j from E = R U^T (n x m): its
  /// fields on either side of the origin are v+- = -(eta_w kappa/n) g+- (plus decay, which
  /// vanishes at 0).
  std::array<double, 2> origin_sums(const double* E, Index i) const {
    std::array<double, 2> g{0.0, 0.0};
    for (Index j = 0; j < n_; ++j) {
      const double x = data_.x[j];
      g[x > 0 ? 0 : 1] += E[j * m_ + i] * x;
    }
    return g;
  }

  /// The side a unit at the origin moves to: +1 when v+ > 0 and v- >= 0, -1 in the mirror
  /// case, 0 when both fields point into the origin (v+ <= 0 <= v-: it stays). When both
  /// point away, where Filippov solutions are not unique, the side w (the state's w_i) is
  /// on, which after a located crossing is the side it was crossing to; at exactly 0 the
  /// faster one. A function of the state alone, as a field must be.
  static int origin_side(const std::array<double, 2>& g, double w) {
    const bool up = g[0] < 0, down = g[1] > 0;  // v+ > 0, v- < 0
    if (up && down) return w > 0 ? 1 : w < 0 ? -1 : (-g[0] >= g[1] ? 1 : -1);
    return up ? 1 : down ? -1 : 0;
  }

  /// The first-layer field of the units at the origin into P_ (their pairs, off, left
  /// their rows 0): the one-sided sum of the side origin_side picks, from E at y in e_.
  /// Continuous where a unit leaves (the outward field grows from 0), so the exit needs no
  /// event, as for sliding pairs.
  void origin_fields(const double* y) {
    for (const Index i : origin_) {
      const auto g = origin_sums(e_.data(), i);
      const int side = origin_side(g, y[wo_ + i]);
      P_[i] += side > 0 ? g[0] : side < 0 ? g[1] : 0.0;
    }
  }

  /// Unit i to mode kOrigin (its pairs are off for the vectorised passes).
  void enter_origin(Index i) {
    for (Index j = 0; j < n_; ++j) set_mode(j * m_ + i, kOrigin);
    const auto at = std::lower_bound(origin_.begin(), origin_.end(), i);
    if (at == origin_.end() || *at != i) origin_.insert(at, i);
  }

  /// Each unit with a switched pair at the origin (a located crossing, or a repair within
  /// atol of it) goes to mode kOrigin. One whose fields both point inward is held at
  /// exactly w_i = 0 (a move within rounding at a located crossing, within atol at a
  /// repair): its field is then exactly 0 at every stage, and so is the part of its output
  /// weights' field that its features carry (relu(0) = 0; decay remains). E at y is in e_.
  void origin_sides(double* y, std::size_t located) {
    units_.clear();
    for (std::size_t s = 0; s < switched_.size(); ++s) {
      const Index i = switched_[s] % m_;
      if (s < located || std::abs(y[wo_ + i]) <= sched_.atol) units_.push_back(i);
    }
    std::sort(units_.begin(), units_.end());
    units_.erase(std::unique(units_.begin(), units_.end()), units_.end());
    for (const Index i : units_) {
      if (origin_side(origin_sums(e_.data(), i), y[wo_ + i]) == 0) y[wo_ + i] = 0.0;
      enter_origin(i);
    }
  }

  /// Units at the origin that the flow has carried off it by more than atol take the side
  /// they are on: the threshold keeps rounding noise, and the flow near an equilibrium
  /// within atol of the origin (common once the loss has converged), from making events.
  /// (Locating the instant a held unit's field turns outward as an event, and deciding each
  /// return to 0 anew, made up to an event per step there: docs/theory.md §H.) True when
  /// one left.
  bool leave_origin(const double* y) {
    bool left = false;
    for (std::size_t k = 0; k < origin_.size();) {
      const Index i = origin_[k];
      const double w = y[wo_ + i];
      if (std::abs(w) <= sched_.atol) {
        ++k;
        continue;
      }
      for (Index j = 0; j < n_; ++j) {
        const double x = data_.x[j];
        set_mode(j * m_ + i, (w > 0 ? x > 0 : x < 0) ? kOn : kOff);
      }
      origin_.erase(origin_.begin() + static_cast<std::ptrdiff_t>(k));
      left = true;
    }
    return left;
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
  /// that keeps w_i . x_j = 0. Writes dy (weight decay of W included); leaves Z in z_,
  /// R in f_, E = R U^T in e_ and P (m x d) in P_, where unit i's field is
  /// dw_i = -eta_w kappa/n P_i: P = (on o E)^T X + the sliding terms + (n lambda_w / kappa) W.
  /// Returns the loss.
  double field_piecewise(const double* y, double* dy) {
    const Index len = n_ * m_;
    pre_activation(y + wo_, z_.data());
    // H = z on the pairs switched on and 0 elsewhere (one vectorisable pass); sliding pairs
    // (a short list) take relu(z), which is 0 up to the drift off their surface.
    double* H = hs_.data();
    for (Index q = 0; q < len; ++q) H[q] = z_[q] * on_[q];
    for (const Slide& sl : slides_) H[sl.j * m_ + sl.i] = std::max(z_[sl.j * m_ + sl.i], 0.0);
    for (const Index i : origin_)  // relu on either side, as the unit may leave in a step
      for (Index j = 0; j < n_; ++j) H[j * m_ + i] = std::max(z_[j * m_ + i], 0.0);
    const View all{data_.x, data_.y, n_};
    const double loss = outputs_to_slope(y, all);  // R into f_
    output_layer_field(y, dy, n_);
    // E = R U^T (c = 1: e_ji = r_j u_i), B = on o E.
    residual_times_u(y, n_, e_.data());
    double* B = gs_.data();
    for (Index q = 0; q < len; ++q) B[q] = on_[q] * e_[q];
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, n_, B, m_, data_.x, d_, P_.data(), d_,
                                                1.0, false);
    origin_fields(y);
    if (net_.lambda_w > 0) {  // decay is part of the unit's field the controls act on
      const double k = static_cast<double>(n_) * net_.lambda_w / net_.kappa;
      Vec(P_.data(), m_ * d_) += k * ConstVec(y + wo_, m_ * d_);
    }
    slide_controls();
    const double a = -net_.eta_w * net_.kappa / static_cast<double>(n_);
    for (Index q = 0; q < m_ * d_; ++q) dy[wo_ + q] = a * P_[q];
    return loss;
  }

  /// Equivalent controls of the sliding pairs, unit by unit. With beta_j = alpha_j e_ij the
  /// sliding part of unit i's field is P_i + sum_j beta_j x_j; the controls minimise its
  /// norm over alpha in [0, 1] (cyclic coordinate descent on a convex quadratic, exact in
  /// one pass for one pair). Where that minimum is reached inside the box, every
  /// x_j . (P_i + sum beta x) = 0: the pairs stay on their surfaces, d(w_i . x_j)/dt = 0.
  /// Otherwise (more sliding pairs than the data can hold, e.g. w_i pinned at 0) it is the
  /// least-motion selection of Filippov's set. Always from alpha = 0: the field stays a
  /// function of the state alone.
  void slide_controls() {
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
          const double e = e_[sl.j * m_ + i];
          v -= sl.beta * x;
          const double best = xnorm2_[sl.j] > 0 ? -x.dot(v) / xnorm2_[sl.j] : 0.0;
          const double beta = std::clamp(best, std::min(0.0, e), std::max(0.0, e));
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

  /// F = kappa H U on v's rows from H in hs_, then R = dl/dF into f_. Returns the mean
  /// loss; with `error`, first writes there the classification error of F.
  double outputs_to_slope(const double* y, const View& v, double* error = nullptr) {
    const ConstMat H(hs_.data(), v.rows, m_);
    if (c_ == 1) {
      Vec r(f_.data(), v.rows);
      r.noalias() = H * ConstVec(y, m_);
      r *= net_.kappa;
    } else {
      gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(v.rows, c_, m_, hs_.data(), m_, y, c_,
                                                  f_.data(), c_, net_.kappa, false);
    }
    if (error) *error = class_error(f_.data(), v.y, v.rows, c_);
    return loss_and_slope(net_.loss, f_.data(), v.y, v.rows, c_);
  }

  /// dU = -eta_u kappa/rows H^T R into dy, from H in hs_ and R in f_ (no decay).
  void output_layer_field(const double* y, double* dy, Index rows) {
    (void)y;
    const double scale = net_.kappa / static_cast<double>(rows);
    if (!(net_.eta_u > 0)) {
      std::fill(dy, dy + wo_, 0.0);
    } else if (c_ == 1) {
      Vec du(dy, m_);
      du.noalias() = ConstMat(hs_.data(), rows, m_).transpose() * ConstVec(f_.data(), rows);
      du *= -net_.eta_u * scale;
    } else {
      gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, c_, rows, hs_.data(), m_, f_.data(), c_,
                                                  dy, c_, -net_.eta_u * scale, false);
    }
  }

  /// E = R U^T (rows x m) into e, from R in f_: e_ji = R_j . U_i.
  void residual_times_u(const double* y, Index rows, double* e) {
    if (c_ == 1) {
      for (Index j = 0; j < rows; ++j)
        for (Index i = 0; i < m_; ++i) e[j * m_ + i] = f_[j] * y[i];
    } else {
      gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(rows, m_, c_, f_.data(), c_, y, c_, e, m_,
                                                  1.0, false);
    }
  }

  /// The smooth field of a tanh / erf / relu (fixed-step) network on view_.
  double field_smooth(const double* y, double* dy) {
    if (has_fused_field(net_)) return field_fused(y, dy);
    const View& v = view_;
    const double loss = forward(y, v, true);
    output_layer_field(y, dy, v.rows);
    double* dw = dy + wo_;
    if (!(net_.eta_w > 0)) {
      std::fill(dw, dw + m_ * d_, 0.0);
      return loss;
    }
    const double scale = net_.kappa / static_cast<double>(v.rows);
    Mat B(gs_.data(), v.rows, m_);  // S, then S o E
    if (c_ == 1) {
      B.array().colwise() *= ConstVec(f_.data(), v.rows).array();  // B = diag(r) S
      gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, v.rows, B.data(), m_, v.x, d_, dw,
                                                  d_, -net_.eta_w * scale, false);
      Mat(dw, m_, d_).array().colwise() *= ConstVec(y, m_).array();
    } else {
      residual_times_u(y, v.rows, e_.data());
      B.array() *= Eigen::Map<const RowMatrix>(e_.data(), v.rows, m_).array();
      gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(m_, d_, v.rows, B.data(), m_, v.x, d_, dw,
                                                  d_, -net_.eta_w * scale, false);
    }
    return loss;
  }

  /// field_smooth when has_fused_field: two passes over the rows x m matrix instead of
  /// about ten. The first turns Z into H in place and sums F = kappa H u; the second
  /// accumulates dU = H^T R and overwrites H with B = diag(R) act'(H) diag(u) (act' from H
  /// itself: S is never stored). dW comes out transposed (X^T B, d x m, into gs_) so that
  /// Eigen packs B^T as a contiguous left-hand side rather than B as a strided right-hand
  /// one. On W3 (relu, n = m = 256, d = 32) a step took 0.81x the time of field_smooth's
  /// general path. (Writing B straight into Eigen's packed layout, and blocks of 16-128
  /// samples kept in L1 with Eigen's kernel called on them, measured no faster.) For relu
  /// with d <= 128 on AVX-512 builds, the products and both passes are instead the two
  /// kernels of relu_kernels.hpp: 1.35x faster again on W3.
  double field_fused(const double* y, double* dy) {
    const View& v = view_;
    const Index rows = v.rows;
    const bool relu = net_.act == Activation::relu;
    double* H = hs_.data();
    const bool kernel = relu_forward_pass(y, v, H);
    if (!kernel) forward_fused(y, v, H);
    const double loss = loss_and_slope(net_.loss, f_.data(), v.y, rows, 1);
    if (kernel) {
      relu_backward_pass(y, v, dy);
      return loss;
    }
    const double scale = net_.kappa / static_cast<double>(rows);
    const bool fit_u = net_.eta_u > 0, fit_w = net_.eta_w > 0;
    std::fill(dy, dy + wo_, 0.0);
    for (Index j = 0; j < rows; ++j) {
      double* h = H + j * m_;
      const double r = f_[j];
      if (fit_u) {
#pragma omp simd
        for (Index i = 0; i < m_; ++i) dy[i] += r * h[i];
      }
      if (!fit_w) continue;
      if (relu) {
#pragma omp simd
        for (Index i = 0; i < m_; ++i) h[i] = h[i] > 0 ? r * y[i] : 0.0;
      } else {
#pragma omp simd
        for (Index i = 0; i < m_; ++i) h[i] = (r * y[i]) * (1.0 - h[i] * h[i]);
      }
    }
    if (fit_u) Vec(dy, m_) *= -net_.eta_u * scale;
    double* dw = dy + wo_;
    if (!fit_w) {
      std::fill(dw, dw + m_ * d_, 0.0);
      return loss;
    }
    double* dwt = gs_.data();
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, m_, rows, v.x, d_, H, m_, dwt, m_,
                                                -net_.eta_w * scale, false);
    for (Index i = 0; i < m_; ++i)
      for (Index k = 0; k < d_; ++k) dw[i * d_ + k] = dwt[k * m_ + i];
    return loss;
  }

  /// field_fused's pass one: Z = X W^T into H, turned into H = act(Z) in place while
  /// F = kappa H u is summed into f_.
  void forward_fused(const double* y, const View& v, double* H) {
    const bool relu = net_.act == Activation::relu;
    pre_activation(y + wo_, v.x, v.rows, H);
    for (Index j = 0; j < v.rows; ++j) {
      double* h = H + j * m_;
      double s = 0.0;
      if (relu) {
#pragma omp simd reduction(+ : s)
        for (Index i = 0; i < m_; ++i) {
          h[i] = h[i] > 0 ? h[i] : 0.0;
          s += h[i] * y[i];
        }
      } else {
        for (Index i = 0; i < m_; ++i) {
          h[i] = std::tanh(h[i]);
          s += h[i] * y[i];
        }
      }
      f_[j] = net_.kappa * s;
    }
  }

  /// field_fused's pass one for relu and a small input dimension, as one kernel
  /// (relu_kernels.hpp): H = max(X W^T, 0) into H and F = kappa H u into f_. W^T goes to
  /// gs_, which the pass's dW^T overwrites later. False where the kernel does not apply.
  bool relu_forward_pass(const double* y, const View& v, double* H) {
#ifdef NTKFLOW_RELU_KERNELS
    if (!uses_relu_kernels(net_)) return false;
    double* wt = gs_.data();
    pack_relu_weights(y + wo_, m_, d_, wt);
    relu_forward(v.x, v.rows, d_, wt, m_, y, net_.kappa, H, f_.data());
    return true;
#else
    (void)y, (void)v, (void)H;
    return false;
#endif
  }

  /// After relu_forward_pass, with R in f_: dU and dW through relu_backward (no B formed).
  void relu_backward_pass(const double* y, const View& v, double* dy) {
#ifdef NTKFLOW_RELU_KERNELS
    const Index rows = v.rows, mp = relu_padded_width(m_);
    const double scale = net_.kappa / static_cast<double>(rows);
    const bool fit_u = net_.eta_u > 0, fit_w = net_.eta_w > 0;
    double* xr = xr_.data();
    for (Index j = 0; j < rows; ++j)
      for (Index k = 0; k < d_; ++k) xr[j * d_ + k] = f_[j] * v.x[j * d_ + k];
    double* g = gs_.data();
    relu_backward(hs_.data(), rows, m_, xr, d_, f_.data(), fit_w ? g : nullptr,
                  fit_u ? dy : nullptr);
    if (fit_u) Vec(dy, m_) *= -net_.eta_u * scale;
    else std::fill(dy, dy + wo_, 0.0);
    double* dw = dy + wo_;
    if (!fit_w) {
      std::fill(dw, dw + m_ * d_, 0.0);
      return;
    }
    for (Index i = 0; i < m_; ++i) {
      const double a = -net_.eta_w * scale * y[i];
      for (Index k = 0; k < d_; ++k) dw[i * d_ + k] = a * g[k * mp + i];
    }
#else
    (void)y, (void)v, (void)dy;
#endif
  }

  /// Linear activation: F = kappa X P with P = W^T U, so with C = kappa/rows X^T R (d x c),
  /// dU = -eta_u W C and dW = -eta_w U C^T: O((rows + m) d c), the data never meet the width.
  double field_linear(const double* y, double* dy) {
    const View& v = view_;
    const double loss = forward_linear(y, v);
    const double scale = net_.kappa / static_cast<double>(v.rows);
    const ConstMat W(y + wo_, m_, d_);
    if (c_ == 1) {
      Vec c(cv_.data(), d_);
      c.noalias() = ConstMat(v.x, v.rows, d_).transpose() * ConstVec(f_.data(), v.rows);
      c *= scale;
      Vec du(dy, m_);
      du.noalias() = W * c;
      du *= -net_.eta_u;
      // dW = -eta_w u c^T, written out: an Eigen outer product of a scaled vector may
      // evaluate the vector into a heap temporary.
      for (Index i = 0; i < m_; ++i) {
        const double a = -net_.eta_w * y[i];
        for (Index k = 0; k < d_; ++k) dy[wo_ + i * d_ + k] = a * cv_[k];
      }
    } else {
      gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, c_, v.rows, v.x, d_, f_.data(), c_,
                                                  cv_.data(), c_, scale, false);
      gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(m_, c_, d_, y + wo_, d_, cv_.data(), c_, dy,
                                                  c_, -net_.eta_u, false);
      gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(m_, d_, c_, y, c_, cv_.data(), c_, dy + wo_,
                                                  d_, -net_.eta_w, false);
    }
    return loss;
  }

  /// dL/dt along the field dy (decay included): grad L = -dtheta/eta - lambda theta per layer.
  double loss_rate(const double* y, const double* dy) const {
    double v = 0.0;
    auto layer = [&](const double* p, const double* dp, Index len, double eta, double lambda) {
      if (!(eta > 0)) return;
      const ConstVec dv(dp, len);
      v += dv.squaredNorm() / eta;
      if (lambda > 0) v += lambda * ConstVec(p, len).dot(dv);
    };
    layer(y, dy, wo_, net_.eta_u, net_.lambda_u);
    layer(y + wo_, dy + wo_, m_ * d_, net_.eta_w, net_.lambda_w);
    return -v;
  }

  /// M = W^T W into M_; returns its trace ||W||_F^2 (as the Recorder sums it).
  double gram_trace(const double* w) {
    gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, d_, m_, w, d_, w, d_, M_.data(), d_, 1.0,
                                                false);
    double tr = 0.0;
    for (Index a = 0; a < d_; ++a) tr += M_[a * d_ + a];
    return tr;
  }

  /// P = W^T U (d x c) into p_.
  void end_to_end(const double* y) {
    if (c_ == 1) {
      Vec p(p_.data(), d_);
      p.noalias() = ConstMat(y + wo_, m_, d_).transpose() * ConstVec(y, m_);
    } else {
      gemm_.run<Eigen::ColMajor, Eigen::RowMajor>(d_, c_, m_, y + wo_, d_, y, c_, p_.data(), c_,
                                                  1.0, false);
    }
  }

  /// Z = X W^T (n x m) on the training inputs into hs_ (or z), or on `rows` inputs x.
  void pre_activation(const double* w) { pre_activation(w, data_.x, n_, hs_.data()); }
  void pre_activation(const double* w, double* z) { pre_activation(w, data_.x, n_, z); }
  void pre_activation(const double* w, const double* x, Index rows, double* z) {
    gemm_.run<Eigen::RowMajor, Eigen::ColMajor>(rows, m_, d_, x, d_, w, d_, z, m_, 1.0, false);
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

  /// From Z on v's rows (computed here unless have_z): H = act(Z) in hs_, S = act'(Z) in
  /// gs_ (when want_s), then R = dl/dF in f_. Returns the loss; with `error`, also writes
  /// there the classification error of F on v's targets.
  double forward(const double* y, const View& v, bool want_s, bool have_z = false,
                 double* error = nullptr) {
    if (!have_z) pre_activation(y + wo_, v.x, v.rows, hs_.data());
    activate(hs_.data(), gs_.data(), v.rows * m_, want_s);
    return outputs_to_slope(y, v, error);
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

  /// Linear activation on v's rows: P = W^T U in p_, R = dl/dF for F = kappa X P in f_.
  /// Returns the loss; with `error`, also writes there the classification error of F.
  double forward_linear(const double* y, const View& v, double* error = nullptr) {
    end_to_end(y);
    if (c_ == 1) {
      Vec r(f_.data(), v.rows);
      r.noalias() = ConstMat(v.x, v.rows, d_) * ConstVec(p_.data(), d_);
      r *= net_.kappa;
    } else {
      gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(v.rows, c_, d_, v.x, d_, p_.data(), c_,
                                                  f_.data(), c_, net_.kappa, false);
    }
    if (error) *error = class_error(f_.data(), v.y, v.rows, c_);
    return loss_and_slope(net_.loss, f_.data(), v.y, v.rows, c_);
  }

  /// The network's outputs F(x) on the test inputs into out (n_test x c); uses hs_
  /// (nonlinear) or p_ (linear) as scratch.
  void test_outputs(const double* y, double* out) {
    if (net_.act == Activation::linear) {
      end_to_end(y);
      if (c_ == 1) {
        Vec f(out, nt_);
        f.noalias() = ConstMat(kr_.test_x, nt_, d_) * ConstVec(p_.data(), d_);
        f *= net_.kappa;
      } else {
        gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(nt_, c_, d_, kr_.test_x, d_, p_.data(), c_,
                                                    out, c_, net_.kappa, false);
      }
      return;
    }
    pre_activation(y + wo_, kr_.test_x, nt_, hs_.data());
    activate(hs_.data(), nullptr, nt_ * m_, false);
    if (c_ == 1) {
      Vec f(out, nt_);
      f.noalias() = ConstMat(hs_.data(), nt_, m_) * ConstVec(y, m_);
      f *= net_.kappa;
    } else {
      gemm_.run<Eigen::RowMajor, Eigen::RowMajor>(nt_, c_, m_, hs_.data(), m_, y, c_, out, c_,
                                                  net_.kappa, false);
    }
  }

  /// The loss of outputs F (rows x c) against targets Y, F left as it is (fts_ is scratch).
  double loss_of(const double* F, const double* Y, Index rows) {
    std::copy(F, F + rows * c_, fts_.begin());
    return loss_and_slope(net_.loss, fts_.data(), Y, rows, c_);
  }

  /// test_loss, test_error and test_lin_gap at record slot `at` (after twin_at for it).
  void record_test(const double* y, Index at) {
    test_outputs(y, ft_.data());
    if (kr_.test_loss) kr_.test_loss[at] = loss_of(ft_.data(), kr_.test_y, nt_);
    if (kr_.test_error) kr_.test_error[at] = class_error(ft_.data(), kr_.test_y, nt_, c_);
    if (kr_.test_lin_gap) {
      const double gap = (ConstVec(ft_.data(), nt_ * c_) - ConstVec(ftl_.data(), nt_ * c_)).norm();
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

  /// Kernel metrics of K_t (n c x n c, symmetric) against K_0. Every quantity is formed from
  /// K_t / max|K_t| and K_0 / max|K_0|: plain sums of squares overflow once Gram entries
  /// pass ~1e154 (and underflow below ~1e-154) while the run itself is still finite. The
  /// scalings divide: the reciprocal of a subnormal maximum would be inf.
  void record_metrics(const double* K, Index at) {
    const Index nn = nc_ * nc_;
    const Eigen::Map<const Eigen::VectorXd> kt(K, nn), k0(k0_.data(), nn);
    const double ct = kt.cwiseAbs().maxCoeff(), c0 = k0_max_;
    const double dt = ct > 0 ? ct : 1.0, d0 = c0 > 0 ? c0 : 1.0;  // all-zero: any divisor
    const double kt_norm = (kt / dt).norm();  // of K_t / ct; Eigen evaluates lazily
    const double dot0 = (kt / dt).dot(k0 / d0);
    const ConstVec yv(data_.y, nc_);
    Vec ky(ky_.data(), nc_);
    ky.noalias() = (ConstMat(K, nc_, nc_) / dt) * yv;
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

  /// r_0 = f_0(X) - y into f_ and its norm into r0_norm_ (the twin's start and the scale
  /// of lin_gap).
  void initial_residual(const double* y) {
    const View all{data_.x, data_.y, n_};
    if (net_.act == Activation::linear)
      forward_linear(y, all);
    else
      forward(y, all, false);
    r0_norm_ = ConstVec(f_.data(), nc_).norm();
  }

  /// loss_lin at every record time, from the initial state in y: the residual of the
  /// linearised network (square loss) is V g(Lambda) V^T r0 with g = exp(-lambda t / n)
  /// (flow) or (1 - lr lambda / n)^t (descent, t = whole steps), exactly.
  void linearised_losses(const double* y) {
    initial_residual(y);
    // Eigen's tridiagonalisation takes one vector from the heap: once per trajectory,
    // outside the time loop.
    eig_->compute(Eigen::Map<const Eigen::MatrixXd>(k0_.data(), nc_, nc_),
                  Eigen::ComputeEigenvectors);
    twin_ok_ = eig_->info() == Eigen::Success;
    if (!twin_ok_) {
      if (kr_.loss_lin)
        for (Index j = 0; j < T_; ++j) kr_.loss_lin[row_ * T_ + j] = kNaN;
      return;
    }
    // The projection of the initial residual on the eigenvectors: every later twin
    // prediction is a diagonal scaling of it (twin_at).
    coef_.noalias() = eig_->eigenvectors().transpose() * ConstVec(f_.data(), nc_);
    if (!kr_.loss_lin) return;
    const Eigen::VectorXd& lam = eig_->eigenvalues();
    const double inv_n = 1.0 / static_cast<double>(n_);
    const bool gd = sched_.solver == Solver::gd;
    for (Index j = 0; j < T_; ++j) {
      const double t = sched_.times[j];
      double acc = 0.0;
      for (Index i = 0; i < nc_; ++i) {
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
  /// O(N^2 + n_test c N) for N = n c, no allocation.
  void twin_at(Index j) {
    const Index at = row_ * T_ + j;
    const Index ntc = nt_ * c_;
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
    for (Index i = 0; i < nc_; ++i) {
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
    Vec r(twin_r_.data(), nc_);
    r.noalias() = V * ConstVec(twin_g_.data(), nc_);
    if (!plan_.test_lin) return;
    Vec w(twin_w_.data(), nc_);
    w.noalias() = V * ConstVec(twin_h_.data(), nc_);
    Vec f(ftl_.data(), ntc);
    f = ConstVec(ft0_.data(), ntc);
    f.noalias() -= ConstMat(kx_.data(), ntc, nc_) * w;
    twin_test_records(at);
  }

  /// The twin's test loss and error at record slot `at`, from its test outputs in ftl_.
  void twin_test_records(Index at) {
    if (kr_.test_loss_lin) kr_.test_loss_lin[at] = loss_of(ftl_.data(), kr_.test_y, nt_);
    if (kr_.test_error_lin)
      kr_.test_error_lin[at] = class_error(ftl_.data(), kr_.test_y, nt_, c_);
  }

  // ---- the stepped twin of minibatch SGD (docs/theory.md §I.3) ----
  // The eigen solution above is full-batch descent; a lazy SGD run differs from that by its
  // batch noise alone. So with minibatches the twin takes the network's own batches and
  // noisy targets, one step at a time: O((n + n_test) c |B| c) per step, with K_0 and the
  // cross Gram as the only O((n + n_test) c n c) memory.

  /// The stepped twin at step 0: the network's own outputs, on the training set and (in
  /// ft0_, from start()) on the test set.
  void start_stepped_twin(const double* y) {
    initial_residual(y);
    std::copy(f_.begin(), f_.begin() + nc_, twin_r_.begin());
    if (plan_.test_lin) std::copy(ft0_.begin(), ft0_.end(), ftl_.begin());
    twin_steps_ = 0;
    twin_pending_ = false;
    twin_ok_ = true;
  }

  /// Brings the stepped twin to `steps` steps: first the batch drawn last (for step
  /// twin_steps_, which the network has taken), then batches drawn here (after a failure,
  /// for the steps the network no longer takes: they depend on the step only).
  void advance_twin(std::int64_t steps) {
    while (twin_steps_ < steps) {
      if (!twin_pending_) draw_step(twin_steps_);
      twin_step();
    }
  }

  /// One step of the linearised network on the batch in idx_ / yb_, in function space:
  /// f_lin <- f_lin - (lr / |B|) K_0[:, B] (f_lin,B - y~_B), the network's step with its
  /// Jacobian frozen at t = 0 (mean over the batch, learning rates inside K_0); the test
  /// outputs move with K_0(X_test, X)[:, B]. A row drawn twice counts twice, as in the
  /// network's batch. No allocation.
  void twin_step() {
    const Index bc = data_.batch * c_;
    const double rate = -sched_.lr / static_cast<double>(data_.batch);
    // Entry t = (slot, output a) of the batch is Gram column idx c + a. Every slope is
    // taken before the update; the label noise is y~ - y.
    for (Index t = 0; t < bc; ++t) {
      const Index q = idx_[t / c_] * c_ + t % c_;
      twin_q_[t] = q;
      twin_s_[t] = rate * (twin_r_[q] - (yb_[t] - data_.y[q]));
    }
    // K_0 is exactly symmetric: its column q is the contiguous row q.
    Vec r(twin_r_.data(), nc_);
    for (Index t = 0; t < bc; ++t) r += twin_s_[t] * ConstVec(k0_.data() + twin_q_[t] * nc_, nc_);
    if (plan_.test_lin) {
      for (Index i = 0; i < nt_ * c_; ++i) {
        const double* row = kx_.data() + i * nc_;
        double acc = 0.0;
        for (Index t = 0; t < bc; ++t) acc += twin_s_[t] * row[twin_q_[t]];
        ftl_[i] += acc;
      }
    }
    ++twin_steps_;
    twin_pending_ = false;
  }

  /// The stepped twin's records at slot j: loss_lin and its test loss and error (lin_gap
  /// and test_lin_gap are written beside the network's).
  void stepped_twin_records(Index j) {
    const Index at = row_ * T_ + j;
    const double inv_n = 1.0 / static_cast<double>(n_);
    if (kr_.loss_lin) kr_.loss_lin[at] = 0.5 * ConstVec(twin_r_.data(), nc_).squaredNorm() * inv_n;
    twin_test_records(at);
  }

  /// The NTK Gram K(x1, x2) of the network (u, w): (n1 c, n2 c); x2 null: K(x1, x1).
  void gram(const double* u, const double* w, const double* x1, Index n1, const double* x2,
            Index n2, double* out) {
    if (c_ == 1)
      gram_serial(net_, u, w, x1, n1, x2, n2, hs_.data(), gs_.data(), gram_, out);
    else
      gram_outputs(net_, u, w, x1, n1, x2, n2, ogram_, out);
  }

  const Network net_;
  const LinearModel lm_;
  const TrainingData data_;
  const Schedule& sched_;
  const Records& out_;
  const KernelRecords& kr_;
  const Plan plan_;
  // samples, width, dim, outputs, offset of W in the state (m c), Gram rows (n c), times,
  // rows of the probe / training Gram record, test samples
  const Index n_, m_, d_, c_, wo_, nc_, T_, g_, nt_;
  Index row_ = 0;
  std::optional<Recorder> rec_;
  NeuronRecorder neurons_;
  AlignedBuffer hs_, gs_, e_;                          // H, S (then S o E), E = R U^T
  AlignedBuffer xr_;                                   // diag(R) X for relu_backward
  AlignedBuffer f_, p_, cv_, M_, ky_;                  // F then R; W^T U; X^T R; W^T W
  AlignedBuffer u0_, w0_, k0_, kt_;
  AlignedBuffer ft_, fts_, ft0_, ftl_, kx_;            // test outputs, twin's, cross Gram
  AlignedBuffer twin_g_, twin_h_, twin_r_, twin_w_;    // twin coefficients and vectors
  AlignedBuffer twin_s_;       // stepped twin: -lr/|B| times the batch's slopes (|B| c)
  std::vector<Index> twin_q_;  // and their Gram columns
  std::vector<std::uint8_t> pattern0_, changed_;
  std::optional<Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>> eig_;
  Eigen::VectorXd coef_;
  Gemm gemm_;
  GramScratch gram_;         // one output
  OutputGramScratch ogram_;  // c >= 2 outputs
  double u0_norm_ = 0, w0_norm_ = 0, k0_unit_ = 0, k0_max_ = 0, y_norm2_ = 0;
  double r0_norm_ = 0, r0t_norm_ = 0;  // ||f_0 - y|| on the training and the test set
  bool twin_ok_ = false;
  // The piecewise (relu + dopri5) integration: pre-activations, P, the mode of every
  // (sample, unit) pair, the sliding pairs sorted by unit, scratch.
  const bool piecewise_;
  // One-dimensional data without a bias: every surface of unit i is w_i = 0, and the unit
  // changes sign only through the origin, where it is decided as a whole (origin_).
  const bool line_;
  AlignedBuffer z_, on_, P_, scratch_, xnorm2_;
  std::vector<std::uint8_t> mode_;
  std::vector<Slide> slides_;
  struct Crossing {
    Index q;    // pair j m + i
    double at;  // fraction of the step
  };
  std::vector<Crossing> crossing_;  // the pairs crossing first in the current step
  std::vector<Index> switched_;     // pairs switched by update_modes
  std::vector<Index> origin_;  // units in mode kOrigin (line_ only), ascending
  std::vector<Index> units_;   // scratch of update_modes: units reaching the origin
  // Minibatch descent: the step's batch (inputs, noisy targets, indices) and the
  // permutation the draws shuffle (the identity between steps).
  const bool sgd_;
  // The twin steps with the network's batches (SGD) instead of the eigen solution; it has
  // taken twin_steps_ of them, and idx_ / yb_ hold the next one when twin_pending_.
  const bool stepped_twin_;
  std::int64_t twin_steps_ = 0;
  bool twin_pending_ = false;
  const std::uint64_t seed_;
  const Index first_;
  AlignedBuffer xb_, yb_;
  std::vector<Index> idx_, perm_;
  View view_{nullptr, nullptr, 0};
  std::optional<NetworkStiff> stiff_;  // rodas4 and auto: W = c I - J and its solves
  std::int64_t rate_calls_ = 0;        // stiff_rate calls in this trajectory
  double rate_ = 0.0;                  // and its last estimate
};

/// Per-thread buffers of the rodas4 and automatic runs on a dataset, sized once.
struct NetworkStiffWorker {
  NetworkStiffWorker(const Network& net, const TrainingData& data, const Schedule& sched,
                     const Records& out, const KernelRecords& kr, const InitSpec& init)
      : params(static_cast<std::size_t>(net.width * (net.outputs + net.dim))),
        thread(net, data, sched, out, kr, init), state(params.size()), handover(params.size()),
        work(static_cast<std::size_t>(
            std::max(workspace_size(thread.state_size()),
                     rodas_workspace_size(thread.state_size())))) {}
  std::vector<double> params;
  NetworkThread thread;
  std::vector<double> state, handover, work;
};

/// solver rodas4: Rodas4 from t = 0. automatic: dopri5 until its steps are held by
/// stability (StiffSwitch on NetworkThread::stiff_rate), then Rodas4 on the same parameter
/// state. Every trajectory decides for itself, so its bits depend on nothing else.
void run_network_stiff(const Network& net, const TrainingData& data, const InitSpec& init,
                       const Schedule& sched, Index trajectories, const Records& out,
                       const KernelRecords& kernel, CancelToken* cancel) {
  const Index m = net.width, d = net.dim, c = net.outputs;
  auto body = [&](NetworkStiffWorker& w, Index k) {
    double* u0 = w.params.data();
    double* w0 = u0 + m * c;
    draw_initial(init, m, d, k, u0, w0);
    NetworkThread& sys = w.thread.start(k, u0, w0, w.state.data());
    Outcome o;
    double t_stiff = kNaN;
    if (sched.solver == Solver::rodas4) {
      o = integrate_rodas4(sys, w.state.data(), sched, w.work.data(), cancel, out.params_all);
      t_stiff = 0.0;
    } else {
      StiffSwitch sw;
      o = integrate_dopri5(sys, w.state.data(), sched, w.work.data(), cancel, out.params_all,
                           &sw);
      if (sw.fired) {
        // sw.y may live in the workspace Rodas4 is about to use.
        std::copy(sw.y, sw.y + sys.size(), w.handover.data());
        t_stiff = sw.t;
        o = integrate_rodas4(sys, w.handover.data(), sched, w.work.data(), cancel,
                             out.params_all, Resume{sw.t, sw.j, sw.h}, o);
      }
    }
    write_outcome(out, k, o);
    if (out.t_stiff) out.t_stiff[k] = t_stiff;
  };
  parallel_items<NetworkStiffWorker>(trajectories, team_size(sched), cancel, body, net, data,
                                     sched, out, kernel, init);
}

}  // namespace detail

void simulate_network(const Network& net, const TrainingData& data, const InitSpec& init,
                      const Schedule& sched, Index trajectories, const Records& out,
                      const KernelRecords& kernel, CancelToken* cancel) {
  if (net.width < 1 || net.dim < 1 || net.outputs < 1 || data.samples < 1 || trajectories < 0)
    throw std::invalid_argument("simulate_network: width, dim, outputs and samples must be >= 1");
  if (init.outputs != net.outputs)
    throw std::invalid_argument("simulate_network: init.outputs must equal net.outputs");
  if (net.loss == Loss::logistic && net.outputs != 1)
    throw std::invalid_argument("the logistic loss needs one output");
  if (net.loss == Loss::softmax && net.outputs < 2)
    throw std::invalid_argument("the softmax loss needs two or more outputs");
  if (!(net.lambda_u >= 0) || !(net.lambda_w >= 0))
    throw std::invalid_argument("weight decay must be >= 0");
  if (data.batch < 0 || (!data.replace && data.batch > data.samples))
    throw std::invalid_argument("the batch must hold 1..samples inputs (without replacement)");
  if (data.batch > 0 && sched.solver != Solver::gd)
    throw std::invalid_argument("minibatches are for gradient descent only");
  if (data.label_noise != 0 && (data.batch == 0 || !(data.label_noise > 0)))
    throw std::invalid_argument("label noise must be > 0 and needs minibatch descent");
  if (kernel.loss_lin && net.loss != Loss::square)
    throw std::invalid_argument("the linearised run is solved for the square loss only");
  if (out.ntk && net.act != Activation::linear)
    throw std::invalid_argument("the (dim, dim) NTK record exists for the linear activation only");
  if (kernel.probe && kernel.n_probe < 1)
    throw std::invalid_argument("a probe set needs at least one input");
  if (kernel.test_x && (kernel.n_test < 1 || !kernel.test_y))
    throw std::invalid_argument("a test set needs at least one input and its targets");
  if (!kernel.test_x && (kernel.test_loss || kernel.test_error || kernel.test_loss_lin ||
                         kernel.test_error_lin || kernel.test_lin_gap))
    throw std::invalid_argument("test records need a test set");
  if (sched.solver == Solver::rodas4 || sched.solver == Solver::automatic) {
    if (sched.solver == Solver::rodas4 && net.act == Activation::relu)
      throw std::invalid_argument(
          "rodas4 needs a smooth activation (linear, tanh, erf): relu's field is piecewise");
    if (sched.solver == Solver::rodas4 && data.samples * net.outputs > detail::kStiffMaxRows)
      throw std::invalid_argument("rodas4 on a dataset needs samples x outputs <= 4096 (its "
                                  "capacitance matrix has (samples outputs)^2 entries)");
    if (detail::stiff_applies(net, data, sched)) {
      detail::run_network_stiff(net, data, init, sched, trajectories, out, kernel, cancel);
      return;
    }
    // auto where no stiff solver applies (relu, too many rows) is dopri5.
    Schedule explicit_only = sched;
    explicit_only.solver = Solver::dopri5;
    detail::run_ensemble<detail::NetworkThread>(net.width, net.dim, init, explicit_only,
                                                trajectories, out, cancel, net, data,
                                                explicit_only, out, kernel, init);
    return;
  }
  detail::run_ensemble<detail::NetworkThread>(net.width, net.dim, init, sched, trajectories,
                                              out, cancel, net, data, sched, out, kernel, init);
}

void sgd_batch(std::uint64_t seed, Index trajectory, std::int64_t step, Index samples,
               Index batch, bool replace, Index* out) {
  if (samples < 1 || batch < 1 || (!replace && batch > samples) || trajectory < 0 ||
      step < 0 || step >= (std::int64_t{1} << 32))
    throw std::invalid_argument("sgd_batch: needs samples >= 1, 1 <= batch (<= samples "
                                "without replacement), trajectory >= 0, 0 <= step < 2^32");
  std::vector<Index> perm(static_cast<std::size_t>(replace ? 0 : samples));
  for (Index j = 0; j < static_cast<Index>(perm.size()); ++j) perm[j] = j;
  detail::draw_batch(seed, static_cast<std::uint64_t>(trajectory), step, samples, batch,
                     replace, perm.data(), out);
}

double piecewise_workspace_bytes(const Network& net, Index samples) {
  const double n = static_cast<double>(samples), m = static_cast<double>(net.width),
               d = static_cast<double>(net.dim);
  // z, relu' on the pieces, P, a field's scratch, ||x_j||^2; the modes (bytes); the sliding
  // pairs reserved up front (they grow past that only when more pairs slide at once).
  const double c = static_cast<double>(net.outputs);
  // + E = R U^T (n x m)
  const double doubles = 3.0 * n * m + m * d + m * (c + d) + n;
  const double slides = std::min(n * m, 4096.0) * (2.0 * sizeof(Index) + 2.0 * sizeof(double));
  // One dimension: the units at the origin, and those reaching it in a step.
  const double origin = net.dim == 1 ? m * (2.0 * sizeof(Index)) : 0.0;
  return 8.0 * doubles + n * m + slides + origin + 64.0 * sizeof(Index);
}

double network_workspace_bytes(const Network& net, Index samples, Index n_probe, bool gram,
                               bool metrics, bool linearized, bool pattern, bool move,
                               Index n_test, Index batch) {
  const double n = static_cast<double>(samples), m = static_cast<double>(net.width),
               d = static_cast<double>(net.dim), np = static_cast<double>(n_probe),
               nt = static_cast<double>(n_test), c = static_cast<double>(net.outputs),
               b = static_cast<double>(batch);
  const double N = n * c, Nt = nt * c;  // rows of the Gram matrices and of the outputs
  const bool linear = net.act == Activation::linear;
  const bool multi = net.outputs > 1;
  const bool any_gram = gram || metrics || linearized;
  const bool test_lin = linearized && n_test > 0;
  const bool probe_gram = gram && n_probe > 0;
  const double rows = std::max(n, b);  // a minibatch drawn with replacement may be larger
  double feat = linear ? 0.0 : rows * m;
  if (!multi) {  // one output: the Gram features share the gradient's buffers
    if (any_gram) feat = std::max(feat, linear ? n * d : n * m);
    if (probe_gram) feat = std::max(feat, linear ? np * d : np * m);
    if (test_lin) feat = std::max(feat, (linear ? d : m) * (nt + n));
  }
  if (n_test > 0 && !linear) feat = std::max(feat, nt * m);
  // gs_: S, or field_fused's dW^T and packed W^T (d x m rounded up to whole panels)
  const double second =
      linear ? 0.0
             : std::max(feat, static_cast<double>(net.dim * detail::relu_padded_width(net.width)));
  double doubles = feat + second + rows * c + N + 2.0 * d * c + d * d;
  if (detail::uses_relu_kernels(net)) {  // diag(R) X, and H's padding to whole panels
    doubles += rows * d;
    doubles += std::max(0.0, rows * static_cast<double>(detail::relu_padded_width(net.width)) - feat);
  }
  if (multi && !linear) doubles += rows * m;  // E = R U^T
  doubles += 10.0 * m * (c + d);  // state and integrator stages
  doubles += m * (c + d);         // initial parameters
  doubles += 2.0 * m;             // per-neuron delta_i(0) and delta_i(t)
  if (move) doubles += m * (c + d);  // their copy, the reference of move_u / move_w
  // SGD's twin steps with the batches: no eigenvectors, only K_0 and the batch's slopes.
  const bool stepped = linearized && batch > 0;
  if (metrics || linearized) doubles += N * N;
  if (metrics) doubles += N * N;
  if (linearized && !stepped) doubles += 2.0 * N * N + 4.0 * N;  // eigenvectors and work
  if (linearized) doubles += N;                  // twin residual
  if (linearized) doubles += stepped ? 2.0 * b * c : N;  // slopes and columns, or coefficients
  if (n_test > 0) doubles += 2.0 * Nt;               // test outputs and a loss's scratch
  if (test_lin) doubles += Nt * N + 2.0 * Nt;        // cross Gram, twin's test outputs
  if (test_lin && !stepped) doubles += 2.0 * N;      // twin coefficients on the test set
  if (batch > 0) doubles += b * (d + c) + 2.0 * b + n;  // the batch, its indices, perm
  double bytes = 8.0 * doubles;
  if (pattern) bytes += n * m + m;
  // GEMM packing space, measured on the same reservations the thread makes.
  detail::Gemm gradient = detail::Gemm::meter();
  detail::reserve_gradient_gemm(gradient, net, std::max(samples, batch));
  detail::reserve_test_gemm(gradient, net, n_test);
  bytes += 8.0 * static_cast<double>(gradient.reserved_doubles());
  if (multi) {
    double most = 0.0;
    if (any_gram) most = std::max(most, detail::OutputGramScratch::bytes(net, samples, samples));
    if (probe_gram) most = std::max(most, detail::OutputGramScratch::bytes(net, n_probe, n_probe));
    if (test_lin) most = std::max(most, detail::OutputGramScratch::bytes(net, n_test, samples));
    return bytes + most;
  }
  detail::GramScratch scratch;
  scratch.gemm = detail::Gemm::meter();
  if (any_gram) scratch.reserve_gemm(net, samples, samples);
  if (probe_gram) scratch.reserve_gemm(net, n_probe, n_probe);
  if (test_lin) scratch.reserve_gemm(net, n_test, samples);
  bytes += 8.0 * static_cast<double>(scratch.gemm.reserved_doubles());
  if (any_gram || probe_gram || test_lin) bytes += detail::GramScratch::buffer_bytes(net);
  return bytes;
}

}  // namespace ntkflow
