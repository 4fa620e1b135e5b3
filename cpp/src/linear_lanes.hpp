// Model A (d = 1), several trajectories side by side (private header): fixed steps (euler,
// rk4, gd) and dopri5 with a step size, accept/reject decision and record landing per lane.
//
// At small widths the fused step of one trajectory (linear_fused.hpp) is dominated by its
// fixed costs: a chain of dependent scalar operations through the Runge-Kutta stages and
// three horizontal sums per pass, ~120 ns a step against ~20 ns for the pass itself at
// width 64. Here kLanes trajectories share one buffer, neuron-major and trajectory-minor
// (u_[i][l]), so every operation of the step, the stage algebra and the pass with
// its sums, is one SIMD operation across trajectories and no sum is ever horizontal.
//
// Lanes never mix: each lane runs the same operations in the same order whatever the other
// lanes hold, and unused lanes hold zeros. A trajectory's bits therefore depend neither on
// which trajectories share its group nor on how many do, so the grouping can follow the
// thread count freely. They differ in rounding from LinearFused<2> (the sums run in another
// order), which is why the choice between the two depends on the width alone.
//
// dopri5 keeps every lane on its own clock: each lane has its own step size, lands on its own
// record times and accepts or rejects its own attempts, exactly as integrate_dopri5 does for
// one trajectory (same step-size rule, landing rule, step limit, stall/divergence tests and
// loss-threshold interpolation). All lanes attempt a step together; the attempt is written
// into a second buffer, and a lane that rejects it gets its old state copied back, so a
// lane's bits never depend on what its neighbours accepted. A lane that has finished or
// failed is zeroed and carried along with a zero step until the whole group is done. Step
// counts can differ from LinearFused<2>'s in rare cases where the error norm, rounded
// differently, falls on the other side of 1.
//
// solver automatic is dopri5 here plus integrate_dopri5's stiffness test in every lane, on
// the lane's own rate (stiff_rate_line, from its Gram entries); a lane found stiff leaves
// the group for the scalar Rodas4 path of run_stiff (LanesWorker::hand_over).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "ensemble.hpp"
#include "integrate.hpp"
#include "linear_decay.hpp"
#include "linear_stiff.hpp"
#include "ntkflow/core.hpp"
#include "rosenbrock.hpp"

namespace ntkflow::detail {

constexpr int kLanes = 8;

/// Widest network run in lanes: a group's state (2 m kLanes doubles) stays within 512 KiB,
/// half of a typical per-core L2, so a step never leaves the core's cache. Above it
/// LinearFused<2> keeps one trajectory in cache at a time and its fixed costs are negligible.
constexpr Index kLanesMaxWidth = (512 * 1024) / (2 * kLanes * 8);

/// NTKFLOW_PRIVATE_NO_LANES=1 in the environment sends model A to LinearFused<2> whatever
/// the width: a private switch for tests and benchmarks that compare the two paths (step
/// counts, statuses, speed). It is read at every call and is not part of the API.
inline bool lanes_disabled() {
#ifdef _MSC_VER
#pragma warning(suppress : 4996)  // getenv is "unsafe" to MSVC only for its returned pointer
#endif
  const char* v = std::getenv("NTKFLOW_PRIVATE_NO_LANES");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

/// dopri5 holds two copies of the group (the state and the attempt), 1 MiB at the widest:
/// still within a core's L2 on current x86 (1-2 MiB), so the same width limit serves both.
/// The solvers are listed, not excluded: a solver added elsewhere must not fall into the
/// fixed-step lanes by default. automatic is dopri5 with a per-lane stiffness test whose
/// stiff lanes leave the group for the scalar Rodas4 path (LanesWorker::hand_over).
inline bool lanes_apply(const LinearModel& md, const Schedule& s) {
  const bool lane_solver = s.solver == Solver::euler || s.solver == Solver::rk4 ||
                           s.solver == Solver::gd || s.solver == Solver::dopri5 ||
                           s.solver == Solver::automatic;
  return lane_solver && md.dim == 1 && md.width <= kLanesMaxWidth && !lanes_disabled();
}

#if (defined(__GNUC__) || defined(__clang__)) && !defined(NTKFLOW_PORTABLE_LANES)
/// kLanes doubles operated on element by element (GCC/Clang vector extension): one AVX-512
/// register, two AVX2 or four SSE2 ones, and held in registers, not memory, across loops.
typedef double LaneVec __attribute__((vector_size(kLanes * sizeof(double))));
typedef std::int64_t LaneBits __attribute__((vector_size(kLanes * sizeof(double))));
/// max(|a|, |b|) per lane, as std::max(std::abs(a), std::abs(b)) for finite values: the
/// sign bit cleared, then the larger of the two.
inline LaneVec abs_max(LaneVec a, LaneVec b) {
  const LaneBits mask = LaneBits{} + INT64_MAX;
  const LaneVec x = (LaneVec)((LaneBits)a & mask), y = (LaneVec)((LaneBits)b & mask);
  return x < y ? y : x;
}
inline LaneVec lane_abs(LaneVec a) { return (LaneVec)((LaneBits)a & (LaneBits{} + INT64_MAX)); }
/// Per lane `if (!(x <= acc)) acc = x`: NeuronRecorder's running maximum, NaN included.
inline LaneVec keep_max(LaneVec acc, LaneVec x) { return x <= acc ? acc : x; }
/// Per lane `if (!(x >= acc)) acc = x`: a running minimum.
inline LaneVec keep_min(LaneVec acc, LaneVec x) { return x >= acc ? acc : x; }
#else
/// The same element-by-element arithmetic for compilers without GCC's vector extension
/// (MSVC), left to the auto-vectoriser: lane l of a result is the scalar operation on
/// lane l, so the bits are those of the vector type (NTKFLOW_PORTABLE_LANES forces this
/// version on GCC or Clang to check that).
struct LaneVec {
  double v[kLanes];  // LaneVec{} is all zeros
  double& operator[](int l) { return v[l]; }
  double operator[](int l) const { return v[l]; }
};
#define NTKFLOW_LANE_OP(op)                                                           \
  inline LaneVec operator op(const LaneVec& a, const LaneVec& b) {                    \
    LaneVec r;                                                                        \
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] op b.v[l];                       \
    return r;                                                                         \
  }                                                                                   \
  inline LaneVec operator op(double a, const LaneVec& b) {                            \
    LaneVec r;                                                                        \
    for (int l = 0; l < kLanes; ++l) r.v[l] = a op b.v[l];                            \
    return r;                                                                         \
  }                                                                                   \
  inline LaneVec operator op(const LaneVec& a, double b) {                            \
    LaneVec r;                                                                        \
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] op b;                            \
    return r;                                                                         \
  }                                                                                   \
  inline LaneVec& operator op##=(LaneVec& a, const LaneVec& b) {                      \
    for (int l = 0; l < kLanes; ++l) a.v[l] = a.v[l] op b.v[l];                       \
    return a;                                                                         \
  }
NTKFLOW_LANE_OP(+)
NTKFLOW_LANE_OP(-)
NTKFLOW_LANE_OP(*)
NTKFLOW_LANE_OP(/)
#undef NTKFLOW_LANE_OP
inline LaneVec operator-(const LaneVec& a) {
  LaneVec r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = -a.v[l];
  return r;
}
inline LaneVec abs_max(const LaneVec& a, const LaneVec& b) {
  LaneVec r;
  for (int l = 0; l < kLanes; ++l) {
    const double x = std::abs(a.v[l]), y = std::abs(b.v[l]);
    r.v[l] = x < y ? y : x;
  }
  return r;
}
inline LaneVec lane_abs(const LaneVec& a) {
  LaneVec r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = std::abs(a.v[l]);
  return r;
}
inline LaneVec keep_max(const LaneVec& acc, const LaneVec& x) {
  LaneVec r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = x.v[l] <= acc.v[l] ? acc.v[l] : x.v[l];
  return r;
}
inline LaneVec keep_min(const LaneVec& acc, const LaneVec& x) {
  LaneVec r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = x.v[l] >= acc.v[l] ? acc.v[l] : x.v[l];
  return r;
}
#endif

inline LaneVec splat(double x) { return LaneVec{} + x; }

/// NeuronRecorder (ensemble.hpp) for all lanes of a group in one pass: the same arithmetic
/// in the same order in every lane (each lane's sums still run over i = 0, 1, ... one
/// after the other), so a trajectory's records are those of NeuronRecorder on its own
/// parameters (delta_std to an ulp, see compute()), whatever its group. One pass serves every lane that records at this point;
/// lane by lane, the strided scalar reads and the dependent sums made these records cost
/// more than the dopri5 steps between 101 record times.
class LaneNeuronRecorder {
 public:
  LaneNeuronRecorder(const Records& out, Index width, Index n_times, double eta_u, double eta_w)
      : out_(&out), m_(width), T_(n_times), eta_u_(eta_u), eta_w_(eta_w),
        on_(out.delta_mean || out.delta_std || out.delta_drift || out.deltas),
        delta0_(on_ ? static_cast<std::size_t>(width) : 0),
        delta_(on_ ? static_cast<std::size_t>(width) : 0) {}

  bool on() const { return on_; }

  /// delta_i(0) of every lane, from the initial state.
  void reference(const LaneVec* u, const LaneVec* w) {
    if (!on_) return;
    finite0_ = true;
    for (Index i = 0; i < m_; ++i) {
      delta0_[i] = eta_w_ * (u[i] * u[i]) - eta_u_ * (w[i] * w[i]);
      for (int l = 0; l < kLanes; ++l) finite0_ = finite0_ && std::isfinite(delta0_[i][l]);
    }
  }

  /// The summaries of every lane at the current state (kept until the next call).
  ///
  /// These passes are bound by latency, not throughput: every neuron waits on the last
  /// one's sum and running maxima. Maxima are exact whatever the order, so they run in two
  /// interleaved chains, and the largest |delta_i - mean| is taken from the extreme
  /// delta_i (rounding is monotone: delta - mean is largest at the largest delta and
  /// smallest at the smallest), which saves a pass. Both hold only without NaN, whose
  /// keep_max is order-dependent; a finite sum and finite delta_i(0) rule NaN out, and
  /// otherwise the passes run as NeuronRecorder orders them. The sums keep their order, so
  /// the bits are those of the in-order passes.
  void compute(const LaneVec* u, const LaneVec* w) {
    if (!on_) return;
    LaneVec sum{}, dev{}, scale{}, lo{}, hi{};
    const bool extremes = finite0_ && summarize_split(u, w, sum, dev, scale, lo, hi);
    if (!extremes) summarize_in_order(u, w, sum, dev, scale);
    const double inv_m = 1.0 / static_cast<double>(m_);
    LaneVec mean = sum * inv_m;
    for (int l = 0; l < kLanes; ++l) {
      if (!std::isinf(mean[l])) continue;  // the sum overflowed: average scaled terms
      double acc = 0.0;
      for (Index i = 0; i < m_; ++i) acc += delta_[i][l] * inv_m;
      mean[l] = acc;
    }
    LaneVec big{};
    if (extremes)
      big = keep_max(keep_max(big, lane_abs(hi - mean)), lane_abs(lo - mean));
    else
      for (Index i = 0; i < m_; ++i) big = keep_max(big, lane_abs(delta_[i] - mean));
    bool scaled = false;
    for (int l = 0; l < kLanes; ++l) scaled = scaled || (big[l] > 0 && std::isfinite(big[l]));
    LaneVec var{};
    if (scaled) {
      // Multiplied by 1/big where NeuronRecorder divides by big: one division per lane
      // instead of one per neuron, which was the slowest part of a record (an ulp of
      // delta_std; lanes with big 0 or inf are not used).
      const LaneVec inv_big = 1.0 / big;
      for (Index i = 0; i < m_; ++i) {
        const LaneVec z = (delta_[i] - mean) * inv_big;
        var += z * z;
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      mean_[l] = mean[l];
      spread_[l] = (big[l] > 0 && std::isfinite(big[l])) ? big[l] * std::sqrt(var[l] * inv_m)
                                                         : big[l];
      drift_[l] = scale[l] > 0 ? dev[l] / scale[l] : (dev[l] > 0 ? kInf : dev[l]);
    }
  }

  /// Lane l's records from the last compute() into trajectory `row`, slot j.
  void write(int l, Index row, Index j) const {
    if (!on_) return;
    const Index at = row * T_ + j;
    if (out_->delta_mean) out_->delta_mean[at] = mean_[l];
    if (out_->delta_std) out_->delta_std[at] = spread_[l];
    if (out_->delta_drift) out_->delta_drift[at] = drift_[l];
    if (out_->deltas)
      for (Index i = 0; i < m_; ++i) out_->deltas[at * m_ + i] = delta_[i][l];
  }

 private:
  /// delta_i into delta_, their sum in order, the running maxima of |delta_i - delta_i(0)|
  /// and eta_w u_i^2 + eta_u w_i^2 over two chains, and the extremes of delta_i; false if
  /// some lane's sum is not finite (its maxima may then have met a NaN).
  bool summarize_split(const LaneVec* u, const LaneVec* w, LaneVec& sum, LaneVec& dev,
                       LaneVec& scale, LaneVec& lo, LaneVec& hi) {
    LaneVec dev1{}, scale1{}, lo1 = splat_inf(), hi1 = -splat_inf();
    lo = splat_inf();
    hi = -splat_inf();
    auto one = [&](Index i, LaneVec& dv, LaneVec& sc, LaneVec& mn, LaneVec& mx) {
      const LaneVec a = eta_w_ * (u[i] * u[i]), b = eta_u_ * (w[i] * w[i]);
      const LaneVec delta = a - b;
      delta_[i] = delta;
      sum += delta;
      dv = keep_max(dv, lane_abs(delta - delta0_[i]));
      sc = keep_max(sc, a + b);
      mn = keep_min(mn, delta);
      mx = keep_max(mx, delta);
    };
    Index i = 0;
    for (; i + 1 < m_; i += 2) {
      one(i, dev, scale, lo, hi);
      one(i + 1, dev1, scale1, lo1, hi1);
    }
    if (i < m_) one(i, dev, scale, lo, hi);
    dev = keep_max(dev, dev1);
    scale = keep_max(scale, scale1);
    lo = keep_min(lo, lo1);
    hi = keep_max(hi, hi1);
    for (int l = 0; l < kLanes; ++l)
      if (!std::isfinite(sum[l])) return false;
    return true;
  }

  /// The same summaries in one chain, in NeuronRecorder's order (NaN included).
  void summarize_in_order(const LaneVec* u, const LaneVec* w, LaneVec& sum, LaneVec& dev,
                          LaneVec& scale) {
    sum = dev = scale = LaneVec{};
    for (Index i = 0; i < m_; ++i) {
      const LaneVec a = eta_w_ * (u[i] * u[i]), b = eta_u_ * (w[i] * w[i]);
      const LaneVec delta = a - b;
      delta_[i] = delta;
      sum += delta;
      dev = keep_max(dev, lane_abs(delta - delta0_[i]));
      scale = keep_max(scale, a + b);
    }
  }

  static LaneVec splat_inf() { return LaneVec{} + kInf; }

  const Records* out_;
  Index m_, T_;
  double eta_u_, eta_w_;
  bool on_;
  bool finite0_ = true;  // every delta_i(0) of every lane is finite
  std::vector<LaneVec> delta0_, delta_;
  double mean_[kLanes]{}, spread_[kLanes]{}, drift_[kLanes]{};
};

/// One thread's buffers: the group state (and for dopri5 the attempted one) and the initial
/// parameters of one trajectory.
class LanesWorker {
 public:
  LanesWorker(const LinearModel& md, const Records& out, Index n_times, const Schedule& s)
      : md_(md), out_(out), T_(n_times), m_(md.width),
        u_(static_cast<std::size_t>(m_)), w_(static_cast<std::size_t>(m_)),
        draw_(static_cast<std::size_t>(2 * m_)),
        neurons_(out, m_, n_times, md.eta_u, md.eta_w) {
    if (s.solver == Solver::dopri5 || s.solver == Solver::automatic) {
      un_.resize(static_cast<std::size_t>(m_));
      wn_.resize(static_cast<std::size_t>(m_));
    }
    if (s.solver == Solver::automatic) stiff_ = std::make_unique<Handover>(md, out, n_times);
    rec_.reserve(kLanes);
  }

  /// Integrates trajectories [k0, k0 + count), count <= kLanes; returns count.
  int run_group(const InitSpec& init, const Schedule& s, Index k0, int count,
                CancelToken* cancel) {
    std::fill(u_.begin(), u_.end(), LaneVec{});
    std::fill(w_.begin(), w_.end(), LaneVec{});
    for (int l = 0; l < count; ++l) {
      draw_initial(init, m_, 1, k0 + l, draw_.data(), draw_.data() + m_);
      for (Index i = 0; i < m_; ++i) {
        u_[i][l] = draw_[i];
        w_[i][l] = draw_[m_ + i];
      }
    }
    rec_.clear();
    for (int l = 0; l < count; ++l) rec_.emplace_back(md_, out_, k0 + l, T_);
    neurons_.reference(u_.data(), w_.data());
    if (stiff_ && out_.t_stiff)  // NaN: the trajectory never switched
      for (int l = 0; l < count; ++l) out_.t_stiff[k0 + l] = kNaN;
    if (s.solver == Solver::dopri5 || s.solver == Solver::automatic)
      run_dopri5(init, s, k0, count, cancel);
    else
      run_fixed(s, k0, count, cancel);
    return count;
  }

 private:
  void run_fixed(const Schedule& s, Index k0, int count, CancelToken* cancel) {
    std::vector<Recorder>& rec = rec_;
    const bool gd = s.solver == Solver::gd;
    const Tableau& tab = s.solver == Solver::rk4 ? kRk4 : kEuler;
    const double scale = gd ? s.lr : 1.0;
    const StepWatch watch{s.loss_threshold, gd};
    const bool want_dloss = watch.want_dloss();
    Outcome o[kLanes];
    bool live[kLanes];
    for (int l = 0; l < kLanes; ++l) live[l] = l < count;
    int n_live = count;
    LaneVec l0, l1, d0, d1;

    gram();
    for (int l = 0; l < count; ++l) rec[l].set_reference(a_[l], b_[l]);
    loss(a_, b_, c_, l0, want_dloss, d0);
    for (int l = 0; l < count; ++l) {
      if (!std::isfinite(l0[l])) {
        fail(rec[l], o[l], Status::diverged, k0 + l, l, 0.0, 0);
        live[l] = false;
        --n_live;
      } else if (s.loss_threshold >= 0 && l0[l] <= s.loss_threshold) {
        o[l].t_hit = 0.0;
      }
    }
    double t = 0.0;
    std::int64_t steps = 0;
    for (Index j = 0; j < s.n_times && n_live > 0; ++j) {
      const double tj = s.times[j];
      if (tj > t) {
        const double span = tj - t;
        const std::int64_t nsteps = fixed_step_count(s, span);
        const double h = span / static_cast<double>(nsteps);
        const double hp = h * scale;
        const double t_start = t;
        for (std::int64_t i = 0; i < nsteps && n_live > 0; ++i) {
          step(tab, hp);
          loss(a_, b_, c_, l1, want_dloss, d1);
          const double t_new =
              (i + 1 == nsteps) ? tj : t_start + static_cast<double>(i + 1) * h;
          ++steps;
          for (int l = 0; l < count; ++l) {
            if (!live[l]) continue;
            o[l].steps = steps;
            if (!std::isfinite(l1[l])) {
              fail(rec[l], o[l], Status::diverged, k0 + l, l, t_new, j);
              live[l] = false;
              --n_live;
              continue;
            }
            watch.after_step(o[l], t, t_new, l0[l], l1[l], d0[l], d1[l]);
          }
          t = t_new;
          l0 = l1;
          d0 = d1;
          if ((steps & 63) == 0 && cancel_requested(cancel)) throw Cancelled();
        }
      }
      Index from[kLanes], to[kLanes];
      for (int l = 0; l < count; ++l) {
        from[l] = j;
        to[l] = live[l] ? j + 1 : j;
      }
      record_lanes(k0, count, from, to, l0);
    }
    for (int l = 0; l < count; ++l) {
      if (live[l] && !out_.params_all) record_params(k0 + l, l, 0);
      write_outcome(out_, k0 + l, o[l]);
    }
  }

  /// integrate_dopri5 (integrate.hpp) lane by lane: the same decisions in the same order for
  /// every lane, on the lane's own clock t[l], step h[l] and next record slot j[l]. With
  /// solver automatic each lane also runs the StiffSwitch test of integrate_dopri5 on its
  /// own rate, and a stiff lane is handed over to Rodas4 (hand_over) and retired.
  void run_dopri5(const InitSpec& init, const Schedule& s, Index k0, int count,
                  CancelToken* cancel) {
    std::vector<Recorder>& rec = rec_;
    const StepWatch watch{s.loss_threshold, false};
    const bool want_dloss = watch.want_dloss();
    Outcome o[kLanes];
    bool live[kLanes], landing[kLanes];
    StepControl control[kLanes];
    double t[kLanes], h[kLanes];
    Index j[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      live[l] = l < count;
      landing[l] = false;
      control[l] = StepControl{-0.2, 10.0};
      t[l] = 0.0;
      h[l] = s.h0;
      j[l] = 0;
    }
    LaneVec l0{}, d0{}, l1{}, d1{}, an{}, bn{}, cn{};
    const bool stiff_test = static_cast<bool>(stiff_);
    StiffSwitch sw[kLanes];

    gram();
    for (int l = 0; l < count; ++l) rec[l].set_reference(a_[l], b_[l]);
    loss(a_, b_, c_, l0, want_dloss, d0);
    for (int l = 0; l < count; ++l) {
      if (!std::isfinite(l0[l])) {
        fail(rec[l], o[l], Status::diverged, k0 + l, l, 0.0, 0);
        retire(l, live);
      } else if (s.loss_threshold >= 0 && l0[l] <= s.loss_threshold) {
        o[l].t_hit = 0.0;
      }
      // Stiff from the start (integrate_dopri5's rule): Rodas4 from t = 0.
      if (stiff_test && live[l] && s.n_times > 0 &&
          stiff_rate_line(md_, a_[l], b_[l]) * s.times[s.n_times - 1] >
              StiffSwitch::kStiffAtStart) {
        hand_over(init, s, k0 + l, l, o[l], Resume{}, cancel);
        retire(l, live);
      }
    }
    if (!(s.h0 > 0)) starting_steps(s, h);

    std::int64_t attempts = 0;
    for (;;) {
      LaneVec hs{};  // 0 in lanes that no longer integrate: their (zero) state stays put
      bool tried[kLanes] = {};
      bool any = false;
      Index from[kLanes];
      for (int l = 0; l < count; ++l) {
        from[l] = j[l];
        if (live[l])
          while (j[l] < s.n_times && s.times[j[l]] <= t[l]) ++j[l];
      }
      record_lanes(k0, count, from, j, l0);
      for (int l = 0; l < count; ++l) {
        if (!live[l]) continue;
        if (j[l] == s.n_times) {
          if (!out_.params_all) record_params(k0 + l, l, 0);
          retire(l, live);
          continue;
        }
        if (s.max_steps > 0 && o[l].steps + o[l].rejected >= s.max_steps) {
          fail(rec[l], o[l], Status::step_limit, k0 + l, l, t[l], j[l]);
          retire(l, live);
          continue;
        }
        // Land exactly on the record time; a step within 1% of it is stretched, not split.
        const double tj = s.times[j[l]];
        landing[l] = t[l] + 1.01 * h[l] >= tj;
        hs[l] = landing[l] ? tj - t[l] : h[l];
        tried[l] = any = true;
      }
      if (!any) break;

      LaneVec t00, t01, t10, t11, e00{}, e01{}, e10{}, e11{};
      stages(kDopri5, hs, t00, t01, t10, t11);  // stage 7 sits at the 5th-order solution
      for (int q = 0; q < 7; ++q) {
        if (kDopri5.e[q] == 0.0) continue;
        const LaneVec c = hs * kDopri5.e[q];
        e00 += c * k00_[q];
        e01 += c * k01_[q];
        e10 += c * k10_[q];
        e11 += c * k11_[q];
      }
      const LaneVec acc = attempt(t00, t01, t10, t11, e00, e01, e10, e11, s.rtol, s.atol,
                                  an, bn, cn);
      loss(an, bn, cn, l1, want_dloss, d1);

      bool keep[kLanes] = {}, died[kLanes] = {}, stiff[kLanes] = {};
      for (int l = 0; l < count; ++l) {
        if (!tried[l]) continue;
        const double err = std::sqrt(acc[l] * inv_size());
        const double hl = hs[l];
        if (err <= 1.0 && std::isfinite(l1[l])) {
          const double t_new = landing[l] ? s.times[j[l]] : t[l] + hl;
          ++o[l].steps;
          watch.after_step(o[l], t[l], t_new, l0[l], l1[l], d0[l], d1[l]);
          t[l] = t_new;
          l0[l] = l1[l];
          d0[l] = d1[l];
          h[l] = control[l].accepted(err, hl, h[l], landing[l]);  // as integrate_dopri5
          // As integrate_dopri5: steps cut short to land say nothing about stability; the
          // rate is that of the state just accepted (the attempt's Gram entries).
          if (stiff_test && !landing[l])
            stiff[l] = sw[l].check(hl, stiff_rate_line(md_, an[l], bn[l]));
        } else {
          ++o[l].rejected;
          keep[l] = true;
          h[l] = control[l].rejected(err, hl);
          if (StepControl::collapsed(h[l], t[l])) {
            fail(rec[l], o[l], StepControl::why(err, l1[l]), k0 + l, l, t[l], j[l]);
            died[l] = true;
          }
        }
      }
      // Rejecting lanes keep their state: copied into the attempt's buffer, which becomes
      // the state. Rejections are rare, so this costs less than blending every pass.
      for (int l = 0; l < count; ++l) {
        if (!keep[l] || died[l]) continue;
        for (Index i = 0; i < m_; ++i) {
          un_[i][l] = u_[i][l];
          wn_[i][l] = w_[i][l];
        }
        an[l] = a_[l];
        bn[l] = b_[l];
        cn[l] = c_[l];
      }
      u_.swap(un_);
      w_.swap(wn_);
      a_ = an;
      b_ = bn;
      c_ = cn;
      for (int l = 0; l < count; ++l) {
        if (stiff[l]) hand_over(init, s, k0 + l, l, o[l], Resume{t[l], j[l], h[l]}, cancel);
        if (died[l] || stiff[l]) retire(l, live);
      }
      if ((++attempts & 63) == 0 && cancel_requested(cancel)) throw Cancelled();
    }
    for (int l = 0; l < count; ++l) write_outcome(out_, k0 + l, o[l]);
  }

  double inv_size() const { return 1.0 / static_cast<double>(2 * m_); }

  /// Buffers of the scalar Rodas4 path for trajectories handed over (solver automatic).
  struct Handover {
    Handover(const LinearModel& md, const Records& out, Index T)
        : start(static_cast<std::size_t>(4 * md.width)),
          neurons(out, md.width, T, md.eta_u, md.eta_w),
          state(static_cast<std::size_t>(LinearStiff::state_size(md, true))),
          work(static_cast<std::size_t>(workspace_size(static_cast<Index>(state.size())))) {}
    std::vector<double> start;  // [u0, w0, u_s, w_s]: t = 0 and the hand-over state
    NeuronRecorder neurons;
    std::vector<double> state, work;
  };

  /// Lane l (trajectory k) continues with Rodas4 from its current state, exactly as
  /// run_stiff (linear.cpp) continues a scalar run after StiffSwitch fires: the state at t
  /// becomes Theta_0 of the propagator, the drift references stay those of t = 0 (drawn
  /// again: the draw is a function of (seed, k) alone), and o goes on counting. The other
  /// lanes wait meanwhile; nothing of theirs is read or written, so no bits depend on the
  /// grouping. Rodas4 on model A costs O(1) a step and O(m) a record.
  void hand_over(const InitSpec& init, const Schedule& s, Index k, int l, Outcome& o,
                 Resume at, CancelToken* cancel) {
    Handover& h = *stiff_;
    double* u0 = h.start.data();
    double* w0 = u0 + m_;
    double* us = w0 + m_;
    double* ws = us + m_;
    draw_initial(init, m_, 1, k, u0, w0);
    for (Index i = 0; i < m_; ++i) {
      us[i] = u_[i][l];
      ws[i] = w_[i][l];
    }
    LinearStiff stiff(md_, out_, k, T_, &h.neurons, true);
    stiff.load(u0, w0, us, ws, h.state.data());
    o = integrate_rodas4(stiff, h.state.data(), s, h.work.data(), cancel, out_.params_all,
                         at, o);
    if (out_.t_stiff) out_.t_stiff[k] = at.t;
  }

  /// Lane l stops integrating: its state becomes zeros, which a zero step leaves in place
  /// (no overflow or NaN is carried through the remaining passes of the group).
  void retire(int l, bool* live) {
    live[l] = false;
    for (Index i = 0; i < m_; ++i) u_[i][l] = w_[i][l] = 0.0;
    a_[l] = b_[l] = c_[l] = 0.0;
  }

  /// Records slots [from[l], to[l]) of every lane l from the current state; the per-neuron
  /// summaries are computed once for all lanes that record.
  void record_lanes(Index k0, int count, const Index* from, const Index* to,
                    const LaneVec& loss_value) {
    bool any = false;
    for (int l = 0; l < count; ++l) any = any || from[l] < to[l];
    if (!any) return;
    neurons_.compute(u_.data(), w_.data());
    for (int l = 0; l < count; ++l) {
      const double p = c_[l], a = a_[l], b = b_[l];
      for (Index j = from[l]; j < to[l]; ++j) {
        rec_[l].write(j, &p, a, &b, loss_value[l]);
        neurons_.write(l, k0 + l, j);
        if (out_.params_all) record_params(k0 + l, l, j);
      }
    }
  }

  /// Hairer's starting step (Solving ODEs I, II.4) per lane, as integrate_dopri5 takes it:
  /// the RMS norms of y, f(y) and of the difference quotient of f along an Euler step.
  /// The field of the linear flow is (u, w) J(g), so three passes suffice: the two norms,
  /// the Gram entry of the Euler point, and the difference quotient.
  void starting_steps(const Schedule& s, double* h) {
    const double kappa = md_.kappa, sigma = md_.sigma[0], beta = md_.beta[0];
    const double eu = md_.eta_u, ew = md_.eta_w;
    const double du = md_.eta_u * md_.lambda_u, dw = md_.eta_w * md_.lambda_w;
    const double rtol = s.rtol, atol = s.atol;
    const LaneVec g = -kappa * (sigma * (kappa * c_ - beta));
    const LaneVec gu = eu * g, gw = ew * g;
    auto field = [&](const LaneVec& gu_, const LaneVec& gw_, const LaneVec& u,
                     const LaneVec& w, LaneVec& ku, LaneVec& kw) {
      ku = gu_ * w - du * u;
      kw = gw_ * u - dw * w;
    };
    LaneVec sy{}, sf{};
    for (Index i = 0; i < m_; ++i) {
      const LaneVec u = u_[i], w = w_[i];
      LaneVec ku, kw;
      field(gu, gw, u, w, ku, kw);
      const LaneVec scu = atol + rtol * abs_max(u, u), scw = atol + rtol * abs_max(w, w);
      const LaneVec yu = u / scu, yw = w / scw, fu = ku / scu, fw = kw / scw;
      sy += yu * yu + yw * yw;
      sf += fu * fu + fw * fw;
    }
    LaneVec h0{};
    double df0[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const double dy0 = std::sqrt(sy[l] * inv_size());
      df0[l] = std::sqrt(sf[l] * inv_size());
      h0[l] = (dy0 < 1e-5 || df0[l] < 1e-5) ? 1e-6 : 0.01 * dy0 / df0[l];
    }
    LaneVec ct{};
    for (Index i = 0; i < m_; ++i) {
      LaneVec ku, kw;
      field(gu, gw, u_[i], w_[i], ku, kw);
      ct += (u_[i] + h0 * ku) * (w_[i] + h0 * kw);
    }
    const LaneVec g2 = -kappa * (sigma * (kappa * ct - beta));
    const LaneVec gu2 = eu * g2, gw2 = ew * g2;
    LaneVec sd{};
    for (Index i = 0; i < m_; ++i) {
      const LaneVec u = u_[i], w = w_[i];
      LaneVec ku, kw, ku2, kw2;
      field(gu, gw, u, w, ku, kw);
      field(gu2, gw2, u + h0 * ku, w + h0 * kw, ku2, kw2);
      const LaneVec scu = atol + rtol * abs_max(u, u), scw = atol + rtol * abs_max(w, w);
      const LaneVec qu = (ku2 - ku) / h0 / scu, qw = (kw2 - kw) / h0 / scw;
      sd += qu * qu + qw * qw;
    }
    const double t_last = s.n_times > 0 ? s.times[s.n_times - 1] : 0.0;
    for (int l = 0; l < kLanes; ++l) {
      const double ddf = std::sqrt(sd[l] * inv_size());
      const double big = std::max(df0[l], ddf);
      const double h1 =
          big <= 1e-15 ? std::max(1e-6, h0[l] * 1e-3) : std::pow(0.01 / big, 0.2);
      h[l] = std::min(100 * h0[l], h1);
      // As integrate_dopri5: no first step near the subnormal range.
      if (s.n_times > 0) h[l] = std::max(h[l], 1e-12 * std::max(1.0, t_last));
    }
  }

  /// Stage algebra of linear_fused.hpp with d = 1, per lane: S_s = I + h sum_j a_sj K_j,
  /// p_s = S_s[:,1]^T Gram S_s[:,0], g_s = -kappa sigma (kappa p_s - beta),
  /// K_s = S_s J(g_s). Decay puts -eta_u lambda_u and -eta_w lambda_w on the diagonal of J.
  /// h is one step for all lanes (double) or one per lane (LaneVec); the last stage matrix
  /// is returned (dopri5's 5th-order step matrix).
  template <class H>
  void stages(const Tableau& tab, const H& h, LaneVec& s00, LaneVec& s01, LaneVec& s10,
              LaneVec& s11) {
    const double kappa = md_.kappa, sigma = md_.sigma[0], beta = md_.beta[0];
    const double eu = md_.eta_u, ew = md_.eta_w;
    const double du = md_.eta_u * md_.lambda_u, dw = md_.eta_w * md_.lambda_w;
    const bool decay = has_decay(md_);
    for (int s = 0; s < tab.stages; ++s) {
      s00 = splat(1.0);
      s01 = LaneVec{};
      s10 = LaneVec{};
      s11 = splat(1.0);
      for (int j = 0; j < s; ++j) {
        if (tab.a[s][j] == 0.0) continue;
        const auto c = h * tab.a[s][j];
        s00 += c * k00_[j];
        s01 += c * k01_[j];
        s10 += c * k10_[j];
        s11 += c * k11_[j];
      }
      const LaneVec v0 = a_ * s00 + c_ * s10;
      const LaneVec v1 = c_ * s00 + b_ * s10;
      const LaneVec p = s01 * v0 + s11 * v1;
      const LaneVec g = -kappa * (sigma * (kappa * p - beta));
      k00_[s] = eu * (s01 * g);
      k10_[s] = eu * (s11 * g);
      k01_[s] = (ew * s00) * g;
      k11_[s] = (ew * s10) * g;
      if (decay) {
        k00_[s] -= du * s00;
        k10_[s] -= du * s10;
        k01_[s] -= dw * s01;
        k11_[s] -= dw * s11;
      }
    }
  }

  /// One fixed step; the step matrix is I + h sum_s b_s K_s.
  void step(const Tableau& tab, double h) {
    LaneVec s00, s01, s10, s11;
    stages(tab, h, s00, s01, s10, s11);
    LaneVec t00 = splat(1.0), t01{}, t10{}, t11 = splat(1.0);
    for (int s = 0; s < tab.stages; ++s) {
      const double c = h * tab.b[s];
      if (c == 0.0) continue;
      t00 += c * k00_[s];
      t01 += c * k01_[s];
      t10 += c * k10_[s];
      t11 += c * k11_[s];
    }
    apply(t00, t01, t10, t11);
  }

  /// The dopri5 attempt in one pass over the group: (un, wn) = (t00 u + t10 w,
  /// t01 u + t11 w) into the second buffer, the Gram entries of the attempt into (an, bn,
  /// cn), and per lane the sum of squared scaled errors, (e00 u + e10 w) / (atol + rtol
  /// max(|u|, |un|)) and its w counterpart, whose mean is integrate_dopri5's err^2.
  ///
  /// Division is the bottleneck of this pass (a 512-bit vdivpd issues every 16 cycles on
  /// Intel cores, against ~20 other vector operations per neuron), so both scaled errors
  /// share one: e_u / s_u = e_u s_w / (s_u s_w). That rounds differently from two
  /// divisions (a few ulp of err, which only steers step sizes) and needs s_u s_w to stay
  /// normal, hence only for atol in [1e-140, 1e140], where s >= atol keeps the product
  /// >= 1e-280 (and an overflowing product means parameters near 1e150, whose loss has
  /// already overflowed and rejects the step anyway). The choice depends on atol alone.
  LaneVec attempt(LaneVec t00, LaneVec t01, LaneVec t10, LaneVec t11, LaneVec e00,
                  LaneVec e01, LaneVec e10, LaneVec e11, double rtol, double atol,
                  LaneVec& an, LaneVec& bn, LaneVec& cn) {
    if (atol >= 1e-140 && atol <= 1e140)
      return attempt_pass<true>(t00, t01, t10, t11, e00, e01, e10, e11, rtol, atol, an, bn, cn);
    return attempt_pass<false>(t00, t01, t10, t11, e00, e01, e10, e11, rtol, atol, an, bn, cn);
  }

  template <bool kShared>
  LaneVec attempt_pass(LaneVec t00, LaneVec t01, LaneVec t10, LaneVec t11, LaneVec e00,
                       LaneVec e01, LaneVec e10, LaneVec e11, double rtol, double atol,
                       LaneVec& an, LaneVec& bn, LaneVec& cn) {
    LaneVec a0{}, b0{}, c0{}, q0{}, a1{}, b1{}, c1{}, q1{};
    const LaneVec* u = u_.data();
    const LaneVec* w = w_.data();
    LaneVec* uo = un_.data();
    LaneVec* wo = wn_.data();
    auto one = [&](Index i, LaneVec& a, LaneVec& b, LaneVec& c, LaneVec& q) {
      const LaneVec ui = u[i], wi = w[i];
      const LaneVec un = t00 * ui + t10 * wi;
      const LaneVec wn = t01 * ui + t11 * wi;
      const LaneVec su = atol + rtol * abs_max(ui, un);
      const LaneVec sw = atol + rtol * abs_max(wi, wn);
      LaneVec ru, rw;
      if constexpr (kShared) {
        const LaneVec inv = 1.0 / (su * sw);
        ru = ((e00 * ui + e10 * wi) * sw) * inv;
        rw = ((e01 * ui + e11 * wi) * su) * inv;
      } else {
        ru = (e00 * ui + e10 * wi) / su;
        rw = (e01 * ui + e11 * wi) / sw;
      }
      uo[i] = un;
      wo[i] = wn;
      a += un * un;
      b += wn * wn;
      c += un * wn;
      q += ru * ru + rw * rw;
    };
    Index i = 0;
    for (; i + 1 < m_; i += 2) {
      one(i, a0, b0, c0, q0);
      one(i + 1, a1, b1, c1, q1);
    }
    if (i < m_) one(i, a0, b0, c0, q0);
    an = a0 + a1;
    bn = b0 + b1;
    cn = c0 + c1;
    return q0 + q1;
  }

  /// (u, w) <- (t00 u + t10 w, t01 u + t11 w) per lane, and the Gram entries of the
  /// result: one pass over the group. Two sets of accumulators, because one chain of
  /// dependent additions per entry would make the pass wait on FMA latency.
  void apply(LaneVec t00, LaneVec t01, LaneVec t10, LaneVec t11) {
    LaneVec a0{}, b0{}, c0{}, a1{}, b1{}, c1{};
    LaneVec* u = u_.data();
    LaneVec* w = w_.data();
    Index i = 0;
    for (; i + 1 < m_; i += 2) {
      const LaneVec un0 = t00 * u[i] + t10 * w[i];
      const LaneVec wn0 = t01 * u[i] + t11 * w[i];
      const LaneVec un1 = t00 * u[i + 1] + t10 * w[i + 1];
      const LaneVec wn1 = t01 * u[i + 1] + t11 * w[i + 1];
      u[i] = un0;
      w[i] = wn0;
      u[i + 1] = un1;
      w[i + 1] = wn1;
      a0 += un0 * un0;
      b0 += wn0 * wn0;
      c0 += un0 * wn0;
      a1 += un1 * un1;
      b1 += wn1 * wn1;
      c1 += un1 * wn1;
    }
    if (i < m_) {
      const LaneVec un = t00 * u[i] + t10 * w[i];
      const LaneVec wn = t01 * u[i] + t11 * w[i];
      u[i] = un;
      w[i] = wn;
      a0 += un * un;
      b0 += wn * wn;
      c0 += un * wn;
    }
    a_ = a0 + a1;
    b_ = b0 + b1;
    c_ = c0 + c1;
  }

  /// The Gram entries of the current state (same order of sums as apply()).
  void gram() {
    LaneVec a0{}, b0{}, c0{}, a1{}, b1{}, c1{};
    const LaneVec* u = u_.data();
    const LaneVec* w = w_.data();
    Index i = 0;
    for (; i + 1 < m_; i += 2) {
      a0 += u[i] * u[i];
      b0 += w[i] * w[i];
      c0 += u[i] * w[i];
      a1 += u[i + 1] * u[i + 1];
      b1 += w[i + 1] * w[i + 1];
      c1 += u[i + 1] * w[i + 1];
    }
    if (i < m_) {
      a0 += u[i] * u[i];
      b0 += w[i] * w[i];
      c0 += u[i] * w[i];
    }
    a_ = a0 + a1;
    b_ = b0 + b1;
    c_ = c0 + c1;
  }

  /// Loss L* + r sigma r / 2 with r = kappa p - beta, and dL/dt along the flow.
  void loss(const LaneVec& a, const LaneVec& b, const LaneVec& c, LaneVec& out,
            bool want_dloss, LaneVec& dl) const {
    const double kappa = md_.kappa, sigma = md_.sigma[0], beta = md_.beta[0];
    const LaneVec r = kappa * c - beta;
    out = md_.loss_min + 0.5 * (r * (sigma * r));
    if (!want_dloss) return;
    const LaneVec g = -kappa * (sigma * r);
    dl = -(md_.eta_w * a * (g * g) + md_.eta_u * (g * (b * g)));
    if (has_decay(md_)) dl += decay_rate(md_) * (g * c);
  }

  void record_params(Index k, int l, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index at = k * (out_.params_all ? T_ : 1) + slot;
    for (Index i = 0; i < m_; ++i) {
      if (out_.u) out_.u[at * m_ + i] = u_[i][l];
      if (out_.w) out_.w[at * m_ + i] = w_[i][l];
    }
  }

  /// As integrate.hpp's fail(): records from slot j on become NaN, the state is kept.
  void fail(Recorder& rec, Outcome& o, Status status, Index k, int l, double t, Index j) {
    o.status = status;
    o.t_fail = t;
    rec.fail_from(j);
    if (!out_.params_all) record_params(k, l, 0);
  }

  const LinearModel& md_;
  const Records& out_;
  Index T_, m_;
  std::vector<LaneVec> u_, w_;
  std::vector<LaneVec> un_, wn_;  // dopri5: the attempted step
  std::vector<double> draw_;
  std::vector<Recorder> rec_;     // one per lane of the current group
  LaneNeuronRecorder neurons_;
  std::unique_ptr<Handover> stiff_;  // solver automatic only
  LaneVec a_{}, b_{}, c_{};
  LaneVec k00_[7]{}, k01_[7]{}, k10_[7]{}, k11_[7]{};
};

/// Model A with euler, rk4, gd or dopri5: trajectories in groups of up to kLanes. Groups are
/// shrunk when there are few trajectories so that every thread gets work; that changes
/// no bits (see the top of this file).
inline void run_lanes(const LinearModel& md, const InitSpec& init, const Schedule& s,
                      Index trajectories, const Records& out, CancelToken* cancel) {
  const int threads = team_size(s);
  const Index per_thread = (trajectories + threads - 1) / threads;
  const int group = static_cast<int>(std::clamp<Index>(per_thread / 2, 1, kLanes));
  const Index groups = (trajectories + group - 1) / group;
  auto body = [&](LanesWorker& w, Index g) {
    const Index k0 = g * group;
    const int count = static_cast<int>(std::min<Index>(group, trajectories - k0));
    return static_cast<Index>(w.run_group(init, s, k0, count, cancel));
  };
  parallel_items<LanesWorker>(groups, threads, cancel, body, md, out, s.n_times, s);
}

}  // namespace ntkflow::detail
