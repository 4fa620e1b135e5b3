// What every ensemble shares (private header): the records common to all systems and the
// OpenMP driver over trajectories.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <memory>
#include <thread>
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
/// that both produce the same records from (p, a = ||u||^2, M = W^T W); the dataset path
/// (nonlinear.cpp) writes its common records through it too (`loss` is for moments only).
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

void draw_initial(const InitSpec& init, Index width, Index dim, Index k, double* u, double* w);

/// Runs body(worker, item) for every item in [0, items) on OpenMP threads. Each thread
/// builds one Worker(args...) before its first item, so all buffers are sized before any
/// time loop. The first exception is rethrown after every thread has stopped; Cancelled
/// from any item stops the others and is rethrown once.
template <class Worker, class Body, class... Args>
void parallel_items(Index items, int threads, CancelToken* cancel, const Body& body,
                    const Args&... args) {
  std::exception_ptr first_error;
  bool cancelled = false;
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
        body(*worker, k);
      } catch (const Cancelled&) {
#pragma omp atomic write
        cancelled = true;
      } catch (...) {
#pragma omp critical(ntkflow_error)
        if (!first_error) first_error = std::current_exception();
      }
    }
    // The starting thread keeps listening for Ctrl-C while the last items finish on other
    // threads (it would otherwise sit in the barrier, deaf, for a whole run).
    finished.fetch_add(1);
    if (cancel && omp_get_thread_num() == 0) {
      const int team = omp_get_num_threads();
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
  return sched.threads > 0 ? sched.threads : omp_get_max_threads();
}

/// Per-thread buffers of run_ensemble: one set reused by all of a thread's trajectories, so
/// nothing is allocated in the time loop and a trajectory's working set stays in cache.
template <class Thread>
struct TrajectoryWorker {
  template <class... Args>
  TrajectoryWorker(Index m, Index d, const Args&... args)
      : params(static_cast<std::size_t>(m * (1 + d))), thread(args...),
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
  const Index m = width, d = dim;
  auto body = [&](TrajectoryWorker<Thread>& w, Index k) {
    draw_initial(init, m, d, k, w.params.data(), w.params.data() + m);
    auto&& sys = w.thread.start(k, w.params.data(), w.params.data() + m, w.state.data());
    write_outcome(out, k, integrate(sys, w.state.data(), sched, w.work.data(), cancel,
                                    out.params_all));
  };
  parallel_items<TrajectoryWorker<Thread>>(trajectories, team_size(sched), cancel, body, m, d,
                                           args...);
}

}  // namespace detail
}  // namespace ntkflow
