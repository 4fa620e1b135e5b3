// Linear two-layer networks on population moments: the full m(1 + d)-parameter flow and
// the width-independent reduced flow of THEORY §B.1, both driven by one ensemble loop.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#include "integrate.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow {
namespace detail {

using ConstVec = Eigen::Map<const Eigen::VectorXd>;
using Vec = Eigen::Map<Eigen::VectorXd>;
using ConstMat = Eigen::Map<const RowMatrix>;
using Mat = Eigen::Map<RowMatrix>;

/// Writes the observables of one trajectory; shared by the full and reduced systems so
/// that both produce the same records from (p, a = ||u||^2, M = W^T W).
class Recorder {
 public:
  Recorder(const LinearModel& model, const Records& out, Index row, Index n_times)
      : md_(model), out_(out), row_(row), T_(n_times), d_(model.dim) {}

  /// Loss from p, through r = kappa p - beta (see LinearModel).
  double loss(const double* p, double* r_buf, double* sr_buf) const {
    const ConstMat sigma(md_.sigma, d_, d_);
    Vec r(r_buf, d_);
    Vec sr(sr_buf, d_);
    r = md_.kappa * ConstVec(p, d_) - ConstVec(md_.beta, d_);
    sr.noalias() = sigma * r;
    return md_.loss_min + 0.5 * r.dot(sr);
  }

  void write(Index j, const double* p, double a, const double* M, double loss) {
    const Index at = row_ * T_ + j;
    double trM = 0.0;
    for (Index i = 0; i < d_; ++i) trM += M[i * d_ + i];
    double p2 = 0.0;
    for (Index i = 0; i < d_; ++i) p2 += p[i] * p[i];
    const double delta = md_.eta_w * a - md_.eta_u * trM;
    if (j == 0 && !have_delta0_) {
      delta0_ = delta;
      have_delta0_ = true;
    }
    if (out_.loss) out_.loss[at] = loss;
    if (out_.norm_u2) out_.norm_u2[at] = a;
    if (out_.norm_w2) out_.norm_w2[at] = trM;
    if (out_.p) std::copy(p, p + d_, out_.p + at * d_);
    if (out_.alignment) {
      // 0/0 (u = 0 or W = 0) is defined as aligned for one neuron (THEORY §E.1) and as
      // unaligned otherwise; rounding can push the ratio a hair above 1.
      const double den = a * trM;
      out_.alignment[at] =
          den > 0 ? std::min(1.0, std::sqrt(p2 / den)) : (md_.width == 1 ? 1.0 : 0.0);
    }
    if (out_.ntk) {
      double* K = out_.ntk + at * d_ * d_;
      const double k2 = md_.kappa * md_.kappa;
      for (Index i = 0; i < d_ * d_; ++i) K[i] = k2 * md_.eta_u * M[i];
      for (Index i = 0; i < d_; ++i) K[i * d_ + i] += k2 * md_.eta_w * a;
    }
    if (out_.drift) {
      const double scale = md_.eta_w * a + md_.eta_u * trM;
      out_.drift[at] = scale > 0 ? (delta - delta0_) / scale : 0.0;
    }
  }

  void fail_from(Index j) {
    for (Index q = j; q < T_; ++q) {
      const Index at = row_ * T_ + q;
      if (out_.loss) out_.loss[at] = kNaN;
      if (out_.norm_u2) out_.norm_u2[at] = kNaN;
      if (out_.norm_w2) out_.norm_w2[at] = kNaN;
      if (out_.alignment) out_.alignment[at] = kNaN;
      if (out_.drift) out_.drift[at] = kNaN;
      if (out_.p) std::fill(out_.p + at * d_, out_.p + (at + 1) * d_, kNaN);
      if (out_.ntk) std::fill(out_.ntk + at * d_ * d_, out_.ntk + (at + 1) * d_ * d_, kNaN);
      if (out_.params_all) {
        const Index m = md_.width;
        if (out_.u) std::fill(out_.u + at * m, out_.u + (at + 1) * m, kNaN);
        if (out_.w) std::fill(out_.w + at * m * d_, out_.w + (at + 1) * m * d_, kNaN);
      }
    }
  }

 private:
  const LinearModel& md_;
  const Records& out_;
  Index row_, T_, d_;
  double delta0_ = 0.0;
  bool have_delta0_ = false;
};

/// Full parameters y = [u (m), W (m x d, row-major)].
class LinearFull {
 public:
  /// scratch: at least scratch_size(model) doubles, private to this trajectory.
  static Index scratch_size(const LinearModel& md) {
    return 4 * md.dim + md.dim * md.dim + md.width;
  }

  LinearFull(const LinearModel& md, const Records& out, Index row, Index n_times,
             double* scratch)
      : md_(md),
        out_(out),
        rec_(md, out, row, n_times),
        row_(row),
        T_(n_times),
        m_(md.width),
        d_(md.dim),
        p_(scratch),
        r_(scratch + d_),
        sr_(scratch + 2 * d_),
        g_(scratch + 3 * d_),
        M_(scratch + 4 * d_),
        wg_(scratch + 4 * d_ + d_ * d_) {}

  static Index state_size(const LinearModel& md) { return md.width * (1 + md.dim); }
  Index size() const { return m_ * (1 + d_); }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    const double kappa = md_.kappa;
    if (d_ == 1) {  // model A: two dot-product-sized passes per evaluation
      const ConstVec u(y, m_), w(y + m_, m_);
      const double r = kappa * u.dot(w) - md_.beta[0];
      const double sr = md_.sigma[0] * r;
      const double g = -kappa * sr;
      Vec(dy, m_) = (md_.eta_u * g) * w;
      Vec(dy + m_, m_) = (md_.eta_w * g) * u;
      if (want_dloss) *dl = -g * g * (md_.eta_u * w.squaredNorm() + md_.eta_w * u.squaredNorm());
      return md_.loss_min + 0.5 * r * sr;
    }
    const ConstVec u(y, m_);
    const ConstMat W(y + m_, m_, d_);
    Vec p(p_, d_), g(g_, d_), wg(wg_, m_);
    p.noalias() = W.transpose() * u;
    const double loss = rec_.loss(p_, r_, sr_);
    g = -kappa * ConstVec(sr_, d_);
    wg.noalias() = W * g;
    Vec(dy, m_) = md_.eta_u * wg;
    Mat(dy + m_, m_, d_).noalias() = (md_.eta_w * u) * g.transpose();
    if (want_dloss) *dl = -(md_.eta_u * wg.squaredNorm() + md_.eta_w * u.squaredNorm() * g.squaredNorm());
    return loss;
  }

  void record(const double* y, Index j) {
    const ConstVec u(y, m_);
    const ConstMat W(y + m_, m_, d_);
    Vec p(p_, d_);
    Mat M(M_, d_, d_);
    p.noalias() = W.transpose() * u;
    M.noalias() = W.transpose() * W;
    rec_.write(j, p_, u.squaredNorm(), M_, rec_.loss(p_, r_, sr_));
  }

  void record_params(const double* y, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(y, y + m_, out_.u + at * m_);
    if (out_.w) std::copy(y + m_, y + m_ * (1 + d_), out_.w + at * m_ * d_);
  }

  void fail_from(Index j) { rec_.fail_from(j); }

  /// The state is the parameter vector itself.
  void load(const double* u, const double* w, double* y) const {
    std::copy(u, u + m_, y);
    std::copy(w, w + m_ * d_, y + m_);
  }

 private:
  const LinearModel& md_;
  const Records& out_;
  Recorder rec_;
  Index row_, T_, m_, d_;
  double *p_, *r_, *sr_, *g_, *M_, *wg_;
};

/// Reduced state y = [p (d), M (d x d, row-major), a] (THEORY §B.1).
class LinearReduced {
 public:
  static Index scratch_size(const LinearModel& md) { return 4 * md.dim; }

  LinearReduced(const LinearModel& md, const Records& out, Index row, Index n_times,
                double* scratch)
      : md_(md), rec_(md, out, row, n_times), d_(md.dim), r_(scratch), sr_(scratch + d_),
        g_(scratch + 2 * d_), mg_(scratch + 3 * d_) {}

  static Index state_size(const LinearModel& md) { return md.dim * (1 + md.dim) + 1; }
  Index size() const { return d_ + d_ * d_ + 1; }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    const ConstVec p(y, d_);
    const ConstMat M(y + d_, d_, d_);
    const double a = y[d_ + d_ * d_];
    const double loss = rec_.loss(y, r_, sr_);
    Vec g(g_, d_), mg(mg_, d_);
    g = -md_.kappa * ConstVec(sr_, d_);
    mg.noalias() = M * g;
    Vec dp(dy, d_);
    dp = md_.eta_w * a * g + md_.eta_u * mg;
    Mat(dy + d_, d_, d_).noalias() = md_.eta_w * (g * p.transpose() + p * g.transpose());
    dy[d_ + d_ * d_] = 2.0 * md_.eta_u * p.dot(g);
    if (want_dloss) *dl = -g.dot(dp);
    return loss;
  }

  void record(const double* y, Index j) {
    rec_.write(j, y, y[d_ + d_ * d_], y + d_, rec_.loss(y, r_, sr_));
  }
  void record_params(const double*, Index) {}
  void fail_from(Index j) { rec_.fail_from(j); }

  void load(const double* u, const double* w, double* y) const {
    const Index m = md_.width;
    const ConstVec uu(u, m);
    const ConstMat W(w, m, d_);
    Vec(y, d_).noalias() = W.transpose() * uu;
    Mat(y + d_, d_, d_).noalias() = W.transpose() * W;
    y[d_ + d_ * d_] = uu.squaredNorm();
  }

 private:
  const LinearModel& md_;
  Recorder rec_;
  Index d_;
  double *r_, *sr_, *g_, *mg_;
};

void draw_initial(const InitSpec& init, Index width, Index dim, Index k, double* u, double* w);

template <class System>
void run_ensemble(const LinearModel& model, const InitSpec& init, const Schedule& sched,
                  Index trajectories, const Records& out, CancelToken* cancel) {
  const Index m = model.width, d = model.dim;
  const int threads = sched.threads > 0 ? sched.threads : omp_get_max_threads();
  std::exception_ptr first_error;
  bool cancelled = false;
#pragma omp parallel num_threads(threads)
  {
    // One set of buffers per thread, reused by all its trajectories: no allocation in the
    // time loop, and a trajectory's whole working set stays in this core's cache.
    std::vector<double> params, state, work, scratch;
    try {
      params.resize(static_cast<std::size_t>(m * (1 + d)));
      const Index n = System::state_size(model);
      state.resize(static_cast<std::size_t>(n));
      work.resize(static_cast<std::size_t>(workspace_size(n)));
      scratch.resize(static_cast<std::size_t>(System::scratch_size(model)));
    } catch (...) {
#pragma omp critical(ntkflow_error)
      if (!first_error) first_error = std::current_exception();
    }
    // Dynamic scheduling keeps cores busy when adaptive runs take different step counts;
    // results do not depend on it because trajectory k only ever touches row k.
#pragma omp for schedule(dynamic, 1)
    for (Index k = 0; k < trajectories; ++k) {
      if (first_error || (cancel && cancel->stop.load(std::memory_order_relaxed))) continue;
      try {
        draw_initial(init, m, d, k, params.data(), params.data() + m);
        System sys(model, out, k, sched.n_times, scratch.data());
        sys.load(params.data(), params.data() + m, state.data());
        const Outcome o =
            integrate(sys, state.data(), sched, work.data(), cancel, out.params_all);
        if (out.status) out.status[k] = static_cast<std::int8_t>(o.status);
        if (out.t_fail) out.t_fail[k] = o.t_fail;
        if (out.steps) out.steps[k] = o.steps;
        if (out.rejected) out.rejected[k] = o.rejected;
        if (out.t_hit) out.t_hit[k] = o.t_hit;
      } catch (const Cancelled&) {
#pragma omp atomic write
        cancelled = true;
      } catch (...) {
#pragma omp critical(ntkflow_error)
        if (!first_error) first_error = std::current_exception();
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  if (cancelled || (cancel && cancel->stop.load())) throw Cancelled();
}

}  // namespace detail

void simulate_linear(const LinearModel& model, const InitSpec& init, const Schedule& sched,
                     Index trajectories, const Records& out, CancelToken* cancel) {
  detail::run_ensemble<detail::LinearFull>(model, init, sched, trajectories, out, cancel);
}

void simulate_linear_reduced(const LinearModel& model, const InitSpec& init,
                             const Schedule& sched, Index trajectories, const Records& out,
                             CancelToken* cancel) {
  if (out.u || out.w) throw std::invalid_argument("the reduced system records no parameters");
  detail::run_ensemble<detail::LinearReduced>(model, init, sched, trajectories, out, cancel);
}

}  // namespace ntkflow
