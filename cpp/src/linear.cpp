// Linear two-layer networks on population moments: the full m(1 + d)-parameter flow and
// the width-independent reduced flow of docs/theory.md §B.1, both driven by one ensemble loop.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "ensemble.hpp"
#include "linear_decay.hpp"
#include "linear_fused.hpp"
#include "linear_lanes.hpp"
#include "linear_stiff.hpp"
#include "rosenbrock.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow {
namespace detail {

/// Full parameters y = [u (m), W (m x d, row-major)].
class LinearFull {
 public:
  /// scratch: at least scratch_size(model) doubles, private to this trajectory.
  static Index scratch_size(const LinearModel& md) {
    return 4 * md.dim + md.dim * md.dim + md.width;
  }

  LinearFull(const LinearModel& md, const Records& out, Index row, Index n_times,
             double* scratch, NeuronRecorder* neurons)
      : md_(md),
        out_(out),
        rec_(md, out, row, n_times),
        neurons_(neurons),
        row_(row),
        T_(n_times),
        m_(md.width),
        d_(md.dim),
        p_(scratch),
        r_(scratch + d_),
        sr_(scratch + 2 * d_),
        g_(scratch + 3 * d_),
        M_(scratch + 4 * d_),
        wg_(scratch + 4 * d_ + d_ * d_),
        decay_(has_decay(md)) {}

  static Index state_size(const LinearModel& md) { return md.width * (1 + md.dim); }
  Index size() const { return m_ * (1 + d_); }

  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    const double kappa = md_.kappa;
    if (d_ == 1) {  // model A: two dot-product-sized passes per evaluation
      const ConstVec u(y, m_), w(y + m_, m_);
      const double r = kappa * u.dot(w) - md_.beta[0];
      const double sr = md_.sigma[0] * r;
      const double g = -kappa * sr;
      if (decay_) {
        Vec(dy, m_) = (md_.eta_u * g) * w - (md_.eta_u * md_.lambda_u) * u;
        Vec(dy + m_, m_) = (md_.eta_w * g) * u - (md_.eta_w * md_.lambda_w) * w;
      } else {
        Vec(dy, m_) = (md_.eta_u * g) * w;
        Vec(dy + m_, m_) = (md_.eta_w * g) * u;
      }
      if (want_dloss) {
        *dl = -g * g * (md_.eta_u * w.squaredNorm() + md_.eta_w * u.squaredNorm());
        if (decay_) *dl += decay_rate(md_) * g * u.dot(w);
      }
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
    if (decay_) {
      Vec(dy, m_) -= (md_.eta_u * md_.lambda_u) * u;
      Mat(dy + m_, m_, d_) -= (md_.eta_w * md_.lambda_w) * W;
    }
    if (want_dloss) {
      *dl = -(md_.eta_u * wg.squaredNorm() + md_.eta_w * u.squaredNorm() * g.squaredNorm());
      if (decay_) *dl += decay_rate(md_) * g.dot(p);  // grad L . theta_dot, p = W^T u
    }
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
    neurons_->write(row_, j, contiguous_neurons(y, y + m_, d_));
  }

  void record_params(const double* y, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(y, y + m_, out_.u + at * m_);
    if (out_.w) std::copy(y + m_, y + m_ * (1 + d_), out_.w + at * m_ * d_);
  }

  void fail_from(Index j) { rec_.fail_from(j); }

  /// The state is the parameter vector itself; the drift references are taken here, from
  /// the initial state, whatever the first record time.
  void load(const double* u, const double* w, double* y) {
    std::copy(u, u + m_, y);
    std::copy(w, w + m_ * d_, y + m_);
    Mat M(M_, d_, d_);  // trace of W^T W as record() forms it: a t = 0 record drifts by 0
    M.noalias() = ConstMat(w, m_, d_).transpose() * ConstMat(w, m_, d_);
    double trM = 0.0;
    for (Index i = 0; i < d_; ++i) trM += M_[i * d_ + i];
    rec_.set_reference(ConstVec(u, m_).squaredNorm(), trM);
    neurons_->reference(contiguous_neurons(u, w, d_));
  }

 private:
  const LinearModel& md_;
  const Records& out_;
  Recorder rec_;
  NeuronRecorder* neurons_;
  Index row_, T_, m_, d_;
  double *p_, *r_, *sr_, *g_, *M_, *wg_;
  bool decay_;
};

/// Reduced state y = [p (d), M (d x d, row-major), a] (docs/theory.md §B.1).
class LinearReduced {
 public:
  static Index scratch_size(const LinearModel& md) { return 4 * md.dim; }

  LinearReduced(const LinearModel& md, const Records& out, Index row, Index n_times,
                double* scratch, NeuronRecorder*)
      : md_(md), rec_(md, out, row, n_times), d_(md.dim), r_(scratch), sr_(scratch + d_),
        g_(scratch + 2 * d_), mg_(scratch + 3 * d_), decay_(has_decay(md)) {}

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
    if (decay_) {  // docs/theory.md §B.1 with weight decay: the system stays closed
      dp -= decay_rate(md_) * p;
      Mat(dy + d_, d_, d_) -= (2.0 * md_.eta_w * md_.lambda_w) * M;
      dy[d_ + d_ * d_] -= 2.0 * md_.eta_u * md_.lambda_u * a;
    }
    if (want_dloss) *dl = -g.dot(dp);  // dL/dt = (dL/dp) . dp/dt, dL/dp = -g
    return loss;
  }

  void record(const double* y, Index j) {
    rec_.write(j, y, y[d_ + d_ * d_], y + d_, rec_.loss(y, r_, sr_));
  }
  double stiff_rate(const double* y) { return rate_(md_, y[d_ + d_ * d_], ConstMat(y + d_, d_, d_)); }
  void record_params(const double*, Index) {}
  void fail_from(Index j) { rec_.fail_from(j); }

  void load(const double* u, const double* w, double* y) {
    const Index m = md_.width;
    const ConstVec uu(u, m);
    const ConstMat W(w, m, d_);
    Vec(y, d_).noalias() = W.transpose() * uu;
    Mat(y + d_, d_, d_).noalias() = W.transpose() * W;
    y[d_ + d_ * d_] = uu.squaredNorm();
    double trM = 0.0;  // summed as the Recorder sums the trace
    for (Index i = 0; i < d_; ++i) trM += y[d_ + i * d_ + i];
    rec_.set_reference(y[d_ + d_ * d_], trM);
  }

 private:
  const LinearModel& md_;
  Recorder rec_;
  Index d_;
  double *r_, *sr_, *g_, *mg_;
  bool decay_;
  StiffRate rate_{d_};
};

/// Per-thread scratch of the linear systems, for run_ensemble.
template <class System>
class LinearThread {
 public:
  LinearThread(const LinearModel& model, const Records& out, Index n_times)
      : md_(model), out_(out), T_(n_times),
        scratch_(static_cast<std::size_t>(System::scratch_size(model))),
        neurons_(out, model.width, n_times, model.eta_u, model.eta_w) {}
  Index state_size() const { return System::state_size(md_); }
  System start(Index k, const double* u, const double* w, double* y) {
    System sys(md_, out_, k, T_, scratch_.data(), &neurons_);
    sys.load(u, w, y);
    return sys;
  }

 private:
  const LinearModel& md_;
  const Records& out_;
  Index T_;
  std::vector<double> scratch_;
  NeuronRecorder neurons_;
};

/// Per-thread buffers of the rodas4 and automatic runs, sized once.
struct StiffWorker {
  StiffWorker(const LinearModel& md, const Records& out, Index T, Index c, bool propagate)
      : params(static_cast<std::size_t>(md.width * (c + md.dim))),
        handover(static_cast<std::size_t>(std::max(LinearFull::state_size(md),
                                                   LinearReduced::state_size(md)))),
        scratch(static_cast<std::size_t>(std::max(LinearFull::scratch_size(md),
                                                  LinearReduced::scratch_size(md)))),
        neurons(out, md.width, T, md.eta_u, md.eta_w),
        state(handover.size()),
        stiff_state(static_cast<std::size_t>(LinearStiff::state_size(md, propagate))),
        work(static_cast<std::size_t>(workspace_size(
            std::max<Index>(static_cast<Index>(handover.size()),
                            static_cast<Index>(stiff_state.size()))))) {}
  std::vector<double> params, handover, scratch;
  NeuronRecorder neurons;
  std::vector<double> state, stiff_state, work;
};

/// solver rodas4: Rodas4 from t = 0. automatic: dopri5 on the system of `method` until
/// its steps are held by stability (StiffSwitch), then Rodas4 from the state reached; the
/// parameters there become Theta_0 of the propagator (method "full"). Every trajectory
/// decides for itself, so its bits depend on nothing else.
void run_stiff(const LinearModel& md, const InitSpec& init, const Schedule& sched,
               LinearMethod method, Index trajectories, const Records& out,
               CancelToken* cancel) {
  const Index m = md.width, d = md.dim, c = init.outputs, T = sched.n_times;
  const bool propagate = method != LinearMethod::reduced;
  auto body = [&](StiffWorker& w, Index k) {
    double* u0 = w.params.data();
    double* w0 = u0 + m * c;
    draw_initial(init, m, d, k, u0, w0);
    LinearStiff stiff(md, out, k, T, &w.neurons, propagate);
    double* ys = w.stiff_state.data();
    Outcome o;
    double t_stiff = kNaN;
    if (sched.solver == Solver::rodas4) {
      stiff.load(u0, w0, u0, w0, ys);
      o = integrate_rodas4(stiff, ys, sched, w.work.data(), cancel, out.params_all);
      t_stiff = 0.0;
    } else {
      auto explicit_first = [&](auto& sys) {
        sys.load(u0, w0, w.state.data());
        StiffSwitch sw;
        o = integrate_dopri5(sys, w.state.data(), sched, w.work.data(), cancel,
                             out.params_all, &sw);
        if (!sw.fired) return;
        // sw.y may live in the workspace Rodas4 is about to use.
        std::copy(sw.y, sw.y + sys.size(), w.handover.data());
        if (propagate) {
          stiff.load(u0, w0, w.handover.data(), w.handover.data() + m, ys);
        } else {
          stiff.load(u0, w0, u0, w0, ys);
          std::copy(w.handover.begin(), w.handover.begin() + sys.size(), ys);
        }
        t_stiff = sw.t;
        o = integrate_rodas4(stiff, ys, sched, w.work.data(), cancel, out.params_all,
                             Resume{sw.t, sw.j, sw.h}, o);
      };
      double* scratch = w.scratch.data();
      if (method == LinearMethod::reduced) {
        LinearReduced sys(md, out, k, T, scratch, &w.neurons);
        explicit_first(sys);
      } else if (method == LinearMethod::stagewise) {
        LinearFull sys(md, out, k, T, scratch, &w.neurons);  // the textbook form: no switch
        explicit_first(sys);
      } else if (d == 1) {
        LinearFused<2> sys(md, out, k, T, scratch, &w.neurons);
        explicit_first(sys);
      } else {
        LinearFused<Eigen::Dynamic> sys(md, out, k, T, scratch, &w.neurons);
        explicit_first(sys);
      }
    }
    write_outcome(out, k, o);
    if (out.t_stiff) out.t_stiff[k] = t_stiff;
  };
  parallel_items<StiffWorker>(trajectories, team_size(sched), cancel, body, md, out, T, c,
                              propagate);
}

}  // namespace detail

void simulate_linear(const LinearModel& model, const InitSpec& init, const Schedule& sched,
                     LinearMethod method, Index trajectories, const Records& out,
                     CancelToken* cancel) {
  using namespace detail;
  if (!(model.lambda_u >= 0.0 && std::isfinite(model.lambda_u)) ||
      !(model.lambda_w >= 0.0 && std::isfinite(model.lambda_w)))
    throw std::invalid_argument("lambda_u and lambda_w must be finite and >= 0");
  auto run = [&](auto tag) {
    using Thread = LinearThread<typename decltype(tag)::type>;
    run_ensemble<Thread>(model.width, model.dim, init, sched, trajectories, out, cancel, model,
                         out, sched.n_times);
  };
  if (sched.solver == Solver::rodas4 || sched.solver == Solver::automatic) {
    if (method == LinearMethod::stagewise && sched.solver == Solver::rodas4)
      throw std::invalid_argument("rodas4 integrates the full or the reduced state, not stagewise");
    if (method == LinearMethod::reduced &&
        (out.u || out.w || out.delta_mean || out.delta_std || out.delta_drift || out.deltas))
      throw std::invalid_argument(
          "the reduced system records no parameters (nor the per-neuron delta_i)");
    // Model A in lanes: dopri5 with a per-lane stiffness test, Rodas4 lane by lane.
    if (sched.solver == Solver::automatic && method == LinearMethod::fused &&
        lanes_apply(model, sched))
      run_lanes(model, init, sched, trajectories, out, cancel);
    else
      run_stiff(model, init, sched, method, trajectories, out, cancel);
    return;
  }
  switch (method) {
    case LinearMethod::fused:
      if (lanes_apply(model, sched))
        run_lanes(model, init, sched, trajectories, out, cancel);
      else if (model.dim == 1)
        run(std::common_type<LinearFused<2>>{});
      else
        run(std::common_type<LinearFused<Eigen::Dynamic>>{});
      return;
    case LinearMethod::stagewise:
      run(std::common_type<LinearFull>{});
      return;
    case LinearMethod::reduced:
      if (out.u || out.w || out.delta_mean || out.delta_std || out.delta_drift || out.deltas)
        throw std::invalid_argument(
            "the reduced system records no parameters (nor the per-neuron delta_i)");
      run(std::common_type<LinearReduced>{});
      return;
  }
  throw std::invalid_argument("unknown LinearMethod");
}

}  // namespace ntkflow
