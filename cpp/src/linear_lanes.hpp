// Model A (d = 1) with fixed steps, several trajectories side by side (private header).
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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ensemble.hpp"
#include "integrate.hpp"
#include "linear_decay.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow::detail {

constexpr int kLanes = 8;

/// Widest network run in lanes: a group's state (2 m kLanes doubles) stays within 512 KiB,
/// half of a typical per-core L2, so a step never leaves the core's cache. Above it
/// LinearFused<2> keeps one trajectory in cache at a time and its fixed costs are negligible.
constexpr Index kLanesMaxWidth = (512 * 1024) / (2 * kLanes * 8);

inline bool lanes_apply(const LinearModel& md, const Schedule& s) {
  return md.dim == 1 && s.solver != Solver::dopri5 && md.width <= kLanesMaxWidth;
}

#if (defined(__GNUC__) || defined(__clang__)) && !defined(NTKFLOW_PORTABLE_LANES)
/// kLanes doubles operated on element by element (GCC/Clang vector extension): one AVX-512
/// register, two AVX2 or four SSE2 ones, and held in registers, not memory, across loops.
typedef double LaneVec __attribute__((vector_size(kLanes * sizeof(double))));
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
#endif

inline LaneVec splat(double x) { return LaneVec{} + x; }

/// Lane l's neurons for NeuronRecorder, one scalar at a time: the same arithmetic in every
/// lane, so a trajectory's delta records do not depend on its group.
struct LaneNeurons {
  const LaneVec* u;
  const LaneVec* w;
  int l;
  NeuronParams operator()(Index i) const {
    const double wi = w[i][l];
    return NeuronParams{u[i][l] * u[i][l], wi * wi};
  }
};

/// One thread's buffers: the group state and the initial parameters of one trajectory.
class LanesWorker {
 public:
  LanesWorker(const LinearModel& md, const Records& out, Index n_times)
      : md_(md), out_(out), T_(n_times), m_(md.width),
        u_(static_cast<std::size_t>(m_)), w_(static_cast<std::size_t>(m_)),
        draw_(static_cast<std::size_t>(2 * m_)) {
    neurons_.reserve(kLanes);
    for (int l = 0; l < kLanes; ++l) neurons_.emplace_back(out, m_, n_times, md.eta_u, md.eta_w);
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
    std::vector<Recorder> rec;
    rec.reserve(kLanes);
    for (int l = 0; l < count; ++l) rec.emplace_back(md_, out_, k0 + l, T_);
    for (int l = 0; l < count; ++l) neurons_[l].reference(LaneNeurons{u_.data(), w_.data(), l});

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
    loss(l0, want_dloss, d0);
    for (int l = 0; l < count; ++l) {
      if (!std::isfinite(l0[l])) {
        fail(rec[l], o[l], k0 + l, l, 0.0, 0);
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
          loss(l1, want_dloss, d1);
          const double t_new =
              (i + 1 == nsteps) ? tj : t_start + static_cast<double>(i + 1) * h;
          ++steps;
          for (int l = 0; l < count; ++l) {
            if (!live[l]) continue;
            o[l].steps = steps;
            if (!std::isfinite(l1[l])) {
              fail(rec[l], o[l], k0 + l, l, t_new, j);
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
      for (int l = 0; l < count; ++l) {
        if (!live[l]) continue;
        const double p = c_[l], a = a_[l], b = b_[l];
        rec[l].write(j, &p, a, &b, l0[l]);
        neurons_[l].write(k0 + l, j, LaneNeurons{u_.data(), w_.data(), l});
        if (out_.params_all) record_params(k0 + l, l, j);
      }
    }
    for (int l = 0; l < count; ++l) {
      if (live[l] && !out_.params_all) record_params(k0 + l, l, 0);
      write_outcome(out_, k0 + l, o[l]);
    }
    return count;
  }

 private:

  /// Stage algebra of linear_fused.hpp with d = 1, per lane: S_s = I + h sum_j a_sj K_j,
  /// p_s = S_s[:,1]^T Gram S_s[:,0], g_s = -kappa sigma (kappa p_s - beta),
  /// K_s = S_s J(g_s); the step matrix is I + h sum_s b_s K_s. Decay puts -eta_u lambda_u
  /// and -eta_w lambda_w on the diagonal of J.
  void step(const Tableau& tab, double h) {
    const double kappa = md_.kappa, sigma = md_.sigma[0], beta = md_.beta[0];
    const double eu = md_.eta_u, ew = md_.eta_w;
    const double du = md_.eta_u * md_.lambda_u, dw = md_.eta_w * md_.lambda_w;
    const bool decay = has_decay(md_);
    for (int s = 0; s < tab.stages; ++s) {
      LaneVec s00 = splat(1.0), s01{}, s10{}, s11 = splat(1.0);
      for (int j = 0; j < s; ++j) {
        const double c = h * tab.a[s][j];
        if (c == 0.0) continue;
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
  void loss(LaneVec& out, bool want_dloss, LaneVec& dl) const {
    const double kappa = md_.kappa, sigma = md_.sigma[0], beta = md_.beta[0];
    const LaneVec r = kappa * c_ - beta;
    out = md_.loss_min + 0.5 * (r * (sigma * r));
    if (!want_dloss) return;
    const LaneVec g = -kappa * (sigma * r);
    dl = -(md_.eta_w * a_ * (g * g) + md_.eta_u * (g * (b_ * g)));
    if (has_decay(md_)) dl += decay_rate(md_) * (g * c_);
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
  void fail(Recorder& rec, Outcome& o, Index k, int l, double t, Index j) {
    o.status = Status::diverged;
    o.t_fail = t;
    rec.fail_from(j);
    if (!out_.params_all) record_params(k, l, 0);
  }

  const LinearModel& md_;
  const Records& out_;
  Index T_, m_;
  std::vector<LaneVec> u_, w_;
  std::vector<double> draw_;
  std::vector<NeuronRecorder> neurons_;  // one per lane
  LaneVec a_{}, b_{}, c_{};
  LaneVec k00_[7]{}, k01_[7]{}, k10_[7]{}, k11_[7]{};
};

/// Model A with euler, rk4 or gd: trajectories in groups of up to kLanes. Groups are
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
  parallel_items<LanesWorker>(groups, threads, cancel, body, md, out, s.n_times);
}

}  // namespace ntkflow::detail
