// What every ensemble shares (private header): the records common to all systems and the
// OpenMP driver over trajectories.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "integrate.hpp"
#include "ntkflow/core.hpp"
#include "threads.hpp"

namespace ntkflow {
namespace detail {

using ConstVec = Eigen::Map<const Eigen::VectorXd>;
using Vec = Eigen::Map<Eigen::VectorXd>;
using ConstMat = Eigen::Map<const RowMatrix>;
using Mat = Eigen::Map<RowMatrix>;

/// Writes the observables of one trajectory; shared by the full and reduced systems so
/// that both produce the same records from (p, a = ||u||^2, M = W^T W); the dataset path
/// (nonlinear.cpp) writes its common records through it too (`loss` is for moments only).
class Recorder {
 public:
  Recorder(const LinearModel& model, const Records& out, Index row, Index n_times)
      : md_(model), out_(out), row_(row), T_(n_times), d_(model.dim),
        pn_(model.dim * model.outputs) {}

  /// Loss from p, through r = kappa p - beta (see LinearModel).
  double loss(const double* p, double* r_buf, double* sr_buf) const {
    const ConstMat sigma(md_.sigma, d_, d_);
    Vec r(r_buf, d_);
    Vec sr(sr_buf, d_);
    r = md_.kappa * ConstVec(p, d_) - ConstVec(md_.beta, d_);
    sr.noalias() = sigma * r;
    return md_.loss_min + 0.5 * r.dot(sr);
  }

  /// Takes the balance-drift reference from the initial state (a = ||u||^2, trM =
  /// ||W||_F^2) rather than from the first record, which may come after t = 0.
  void set_reference(double a, double trM) {
    delta0_ = md_.eta_w * a - md_.eta_u * trM;
    have_delta0_ = true;
  }

  void write(Index j, const double* p, double a, const double* M, double loss) {
    const Index at = row_ * T_ + j;
    double trM = 0.0;
    for (Index i = 0; i < d_; ++i) trM += M[i * d_ + i];
    double p2 = 0.0;
    for (Index i = 0; i < pn_; ++i) p2 += p[i] * p[i];
    const double delta = md_.eta_w * a - md_.eta_u * trM;
    if (j == 0 && !have_delta0_) {
      delta0_ = delta;
      have_delta0_ = true;
    }
    if (out_.loss) out_.loss[at] = loss;
    if (out_.norm_u2) out_.norm_u2[at] = a;
    if (out_.norm_w2) out_.norm_w2[at] = trM;
    if (out_.p) std::copy(p, p + pn_, out_.p + at * pn_);
    if (out_.alignment) {
      // u = 0 or W = 0 makes the Gram determinant zero: the layers count as parallel, so
      // a = 1 (docs/theory.md §E.1, and what exact.line reports). One neuron is aligned by
      // definition; computing it would only show the integration error of the reduced
      // system. Rounding can push the ratio a hair above 1.
      const double den = a * trM;
      out_.alignment[at] =
          (den > 0 && md_.width > 1) ? std::min(1.0, std::sqrt(p2 / den)) : 1.0;
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
      if (out_.p) std::fill(out_.p + at * pn_, out_.p + (at + 1) * pn_, kNaN);
      if (out_.ntk) std::fill(out_.ntk + at * d_ * d_, out_.ntk + (at + 1) * d_ * d_, kNaN);
      const Index m = md_.width;
      for (double* rec : {out_.delta_mean, out_.delta_std, out_.delta_drift})
        if (rec) rec[at] = kNaN;
      if (out_.deltas) std::fill(out_.deltas + at * m, out_.deltas + (at + 1) * m, kNaN);
      if (out_.params_all) {
        const Index mc = m * md_.outputs;
        if (out_.u) std::fill(out_.u + at * mc, out_.u + (at + 1) * mc, kNaN);
        if (out_.w) std::fill(out_.w + at * m * d_, out_.w + (at + 1) * m * d_, kNaN);
      }
    }
  }

 private:
  const LinearModel& md_;
  const Records& out_;
  Index row_, T_, d_;
  Index pn_;  // entries of p: dim x outputs
  double delta0_ = 0.0;
  bool have_delta0_ = false;
};

/// One neuron's parameters as the per-neuron records need them: ||U_i||^2 and ||w_i||^2.
struct NeuronParams {
  double u2;
  double w2;
};

/// neuron(i) for parameters stored contiguously: U (m, c), w (m, d) row-major.
inline auto contiguous_neurons(const double* u, const double* w, Index d, Index c = 1) {
  return [u, w, d, c](Index i) {
    const double* wi = w + i * d;
    double w2 = 0.0;
    for (Index k = 0; k < d; ++k) w2 += wi[k] * wi[k];
    double u2 = 0.0;
    for (Index a = 0; a < c; ++a) u2 += u[i * c + a] * u[i * c + a];
    return NeuronParams{u2, w2};
  };
}

/// The per-neuron conserved quantities delta_i = eta_w ||U_i||^2 - eta_u ||w_i||^2 of
/// docs/theory.md §E.5 (conserved by gradient flow for 1-homogeneous activations): their mean, spread and
/// relative drift, and on request every delta_i. One per thread (per lane), sized once:
/// nothing is allocated per trajectory or in the time loop. Parameters are read through
/// `neuron(i) -> NeuronParams`, so that the lane layout and the contiguous one share the
/// arithmetic. NaN from a failure is written by Recorder::fail_from.
class NeuronRecorder {
 public:
  NeuronRecorder(const Records& out, Index width, Index n_times, double eta_u, double eta_w)
      : out_(&out), m_(width), T_(n_times), eta_u_(eta_u), eta_w_(eta_w),
        on_(out.delta_mean || out.delta_std || out.delta_drift || out.deltas),
        delta0_(on_ ? static_cast<std::size_t>(width) : 0),
        delta_(on_ ? static_cast<std::size_t>(width) : 0) {}

  bool on() const { return on_; }

  /// delta_i(0), from the initial state (the first record may come after t = 0).
  template <class Neuron>
  void reference(const Neuron& neuron) {
    if (!on_) return;
    for (Index i = 0; i < m_; ++i) {
      const NeuronParams q = neuron(i);
      delta0_[i] = eta_w_ * q.u2 - eta_u_ * q.w2;
    }
  }

  /// Records of trajectory `row` at record slot j.
  template <class Neuron>
  void write(Index row, Index j, const Neuron& neuron) {
    if (!on_) return;
    double sum = 0.0, dev = 0.0, scale = 0.0;
    for (Index i = 0; i < m_; ++i) {
      const NeuronParams q = neuron(i);
      const double a = eta_w_ * q.u2, b = eta_u_ * q.w2;
      const double delta = a - b;
      delta_[i] = delta;
      sum += delta;
      const double moved = std::abs(delta - delta0_[i]);
      if (!(moved <= dev)) dev = moved;  // keeps a NaN
      const double s = a + b;
      if (!(s <= scale)) scale = s;
    }
    const double inv_m = 1.0 / static_cast<double>(m_);
    double mean = sum * inv_m;
    if (std::isinf(mean)) {  // the sum overflowed, not the deltas: average scaled terms
      mean = 0.0;
      for (Index i = 0; i < m_; ++i) mean += delta_[i] * inv_m;
    }
    // Two passes (no cancellation when |mean| >> spread), and squares of the deviations
    // scaled by the largest one: parameters of 1e160 square to a finite delta_i, but its
    // square would overflow while the run is still finite.
    double big = 0.0;
    for (Index i = 0; i < m_; ++i) {
      const double dev_i = std::abs(delta_[i] - mean);
      if (!(dev_i <= big)) big = dev_i;
    }
    double spread = big;  // 0 or non-finite: already the answer
    if (big > 0 && std::isfinite(big)) {
      double var = 0.0;
      for (Index i = 0; i < m_; ++i) {
        const double z = (delta_[i] - mean) / big;
        var += z * z;
      }
      spread = big * std::sqrt(var * inv_m);
    }
    const Index at = row * T_ + j;
    if (out_->delta_mean) out_->delta_mean[at] = mean;
    if (out_->delta_std) out_->delta_std[at] = spread;
    // Relative to the largest per-neuron scale eta_w u_i^2 + eta_u ||w_i||^2 (>= |delta_i|):
    // a conserved run then shows its rounding or integration error, whatever the units.
    // All parameters exactly 0 (scale 0): 0 if nothing moved, else +inf (NaN means failed).
    if (out_->delta_drift)
      out_->delta_drift[at] = scale > 0 ? dev / scale : (dev > 0 ? kInf : dev);
    if (out_->deltas) std::copy(delta_.begin(), delta_.end(), out_->deltas + at * m_);
  }

 private:
  const Records* out_;
  Index m_, T_;
  double eta_u_, eta_w_;
  bool on_;
  std::vector<double> delta0_, delta_;
};

NTKFLOW_NOINLINE void draw_initial(const InitSpec& init, Index width, Index dim, Index k,
                                    double* u, double* w);

/// Runs body(worker, item) for every item in [0, items) on OpenMP threads, adding to
/// cancel->done the trajectories each item finished (body's return value, or 1 if void). Each thread
/// builds one Worker(args...) before its first item, so all buffers are sized before any
/// time loop. The first exception is rethrown after every thread has stopped; Cancelled
/// from any item stops the others and is rethrown once.
template <class Worker, class Body, class... Args>
void parallel_items(Index items, [[maybe_unused]] int threads, CancelToken* cancel,
                    const Body& body, const Args&... args) {
  std::exception_ptr first_error;
  std::atomic<bool> cancelled{false};  // not `omp atomic write`: MSVC has OpenMP 2.0 only
  std::atomic<int> finished{0};
#pragma omp parallel num_threads(threads)
  {
    std::unique_ptr<Worker> worker;
    try {
      worker = std::make_unique<Worker>(args...);
    } catch (...) {
#pragma omp critical(ntkflow_error)
      if (!first_error) first_error = std::current_exception();
    }
    // Dynamic scheduling keeps cores busy when adaptive runs take different step counts;
    // results do not depend on it because an item only ever writes its own rows.
#pragma omp for schedule(dynamic, 1) nowait
    for (Index k = 0; k < items; ++k) {
      if (!worker || first_error || (cancel && cancel->stop.load(std::memory_order_relaxed)))
        continue;
      try {
        // body returns how many trajectories the item finished (void: one).
        Index finished_here = 1;
        if constexpr (std::is_void_v<decltype(body(*worker, k))>)
          body(*worker, k);
        else
          finished_here = body(*worker, k);
        if (cancel) cancel->done.fetch_add(finished_here, std::memory_order_relaxed);
      } catch (const Cancelled&) {
        cancelled.store(true);
      } catch (...) {
#pragma omp critical(ntkflow_error)
        if (!first_error) first_error = std::current_exception();
      }
    }
    // The starting thread keeps listening for Ctrl-C while the last items finish on other
    // threads (it would otherwise sit in the barrier, deaf, for a whole run).
    finished.fetch_add(1);
    if (cancel && thread_num() == 0) {
      const int team = num_threads();
      while (finished.load() < team) {
        cancel_requested(cancel);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  if (cancelled || (cancel && cancel->stop.load())) throw Cancelled();
}

inline int team_size(const Schedule& sched) {
  return team_threads(sched.threads);
}

/// Per-thread buffers of run_ensemble: one set reused by all of a thread's trajectories, so
/// nothing is allocated in the time loop and a trajectory's working set stays in cache.
template <class Thread>
struct TrajectoryWorker {
  template <class... Args>
  TrajectoryWorker(Index m, Index d, Index c, const Args&... args)
      : params(static_cast<std::size_t>(m * (c + d))), thread(args...),
        state(static_cast<std::size_t>(thread.state_size())),
        work(static_cast<std::size_t>(workspace_size(thread.state_size()))) {}
  std::vector<double> params;
  Thread thread;
  std::vector<double> state, work;
};

inline void write_outcome(const Records& out, Index k, const Outcome& o) {
  if (out.status) out.status[k] = static_cast<std::int8_t>(o.status);
  if (out.t_fail) out.t_fail[k] = o.t_fail;
  if (out.steps) out.steps[k] = o.steps;
  if (out.rejected) out.rejected[k] = o.rejected;
  if (out.events) out.events[k] = o.events;
  if (out.t_hit) out.t_hit[k] = o.t_hit;
}

/// Integrates `trajectories` independent runs, OpenMP over trajectories.
///
/// `Thread` holds everything one thread needs and is constructed once per thread as
/// `Thread(args...)`. It provides
///   Index state_size() const;
///   System start(Index k, const double* u0, const double* w0, double* y);
/// (or a System& from start): the system for trajectory k, its state loaded into y from the
/// initial parameters. Trajectory k only ever writes row k of the records, so the results do
/// not depend on the thread count or the schedule.
template <class Thread, class... Args>
void run_ensemble(Index width, Index dim, const InitSpec& init, const Schedule& sched,
                  Index trajectories, const Records& out, CancelToken* cancel,
                  const Args&... args) {
  const Index m = width, d = dim, c = init.outputs;
  auto body = [&](TrajectoryWorker<Thread>& w, Index k) {
    draw_initial(init, m, d, k, w.params.data(), w.params.data() + m * c);
    auto&& sys = w.thread.start(k, w.params.data(), w.params.data() + m * c, w.state.data());
    write_outcome(out, k, integrate(sys, w.state.data(), sched, w.work.data(), cancel,
                                    out.params_all));
  };
  parallel_items<TrajectoryWorker<Thread>>(trajectories, team_size(sched), cancel, body, m, d,
                                           c, args...);
}

}  // namespace detail
}  // namespace ntkflow
