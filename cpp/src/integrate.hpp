// Time integrators shared by every system of the core (private header).
//
// A System provides
//   Index size() const;                        length of the flat state
//   double field(const double* y, double* dy,  flow field dy = -eta * grad L at y; returns
//                bool want_dloss, double* dl); L(y) and, on request, dL/dt along the flow
//   void record(const double* y, Index j);     observables at record slot j
//   void record_params(const double* y, Index j);
//   void fail_from(Index j);                   NaN into record slots j, j+1, ...
// and, when its field is only piecewise smooth (relu), the switching hooks of dopri5:
//   double switch_fraction(const DenseStep&);  first switching time in (0, 1] of the step
//   bool update_modes(double* y, bool fresh);  new smooth pieces at y (true: changed); may
//                                              set a weight it holds at 0 to exactly 0
// Integrators never allocate: they work in a caller-provided buffer of
// workspace_size(n) doubles, so one buffer per thread serves every trajectory.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "ntkflow/core.hpp"
#include "threads.hpp"

namespace ntkflow::detail {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Outcome {
  Status status = Status::ok;
  double t_fail = kNaN;
  std::int64_t steps = 0;
  std::int64_t rejected = 0;
  std::int64_t events = 0;  // switching events located (piecewise-smooth fields)
  double t_hit = kNaN;
};

inline Index workspace_size(Index n) { return 9 * n; }

/// Butcher tableau of an explicit method with at most 7 stages.
struct Tableau {
  int stages;
  double a[7][7];
  double b[7];
  double e[7];  // error weights (5th - 4th order) for embedded pairs, else 0
};

// clang-format off
inline constexpr Tableau kEuler{1, {{0}}, {1}, {0}};
inline constexpr Tableau kRk4{4, {{0}, {0.5}, {0, 0.5}, {0, 0, 1}},
                              {1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6}, {0}};
inline constexpr Tableau kDopri5{7,
    {{0},
     {1.0 / 5},
     {3.0 / 40, 9.0 / 40},
     {44.0 / 45, -56.0 / 15, 32.0 / 9},
     {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
     {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
     {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}},
    {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84, 0},
    {71.0 / 57600, 0, -71.0 / 16695, 71.0 / 1920, -17253.0 / 339200, 22.0 / 525, -1.0 / 40}};
// clang-format on


/// One accepted Dormand-Prince step from y to yn, with its stage slopes, and the continuous
/// extension of order 4 (Hairer, Norsett & Wanner, Solving ODEs I, II.6): component q at
/// t + theta h is c0 + theta (c1 + (1 - theta) (c2 + theta (c3 + (1 - theta) c4))).
struct DenseStep {
  const double *y, *yn, *k1, *k3, *k4, *k5, *k6, *k7;
  double h;

  /// The five coefficients of component q.
  void coeffs(Index q, double c[5]) const {
    constexpr double d1 = -12715105075.0 / 11282082432, d3 = 87487479700.0 / 32700410799,
                     d4 = -10690763975.0 / 1880347072, d5 = 701980252875.0 / 199316789632,
                     d6 = -1453857185.0 / 822651844, d7 = 69997945.0 / 29380423;
    const double diff = yn[q] - y[q];
    const double bspl = h * k1[q] - diff;
    c[0] = y[q];
    c[1] = diff;
    c[2] = bspl;
    c[3] = diff - h * k7[q] - bspl;
    c[4] = h * (d1 * k1[q] + d3 * k3[q] + d4 * k4[q] + d5 * k5[q] + d6 * k6[q] + d7 * k7[q]);
  }

  static double eval(const double c[5], double theta) {
    const double th1 = 1.0 - theta;
    return c[0] + theta * (c[1] + th1 * (c[2] + theta * (c[3] + th1 * c[4])));
  }

  /// The whole state at t + theta h into out (may alias yn: each component reads only
  /// its own index).
  void state(double theta, Index n, double* out) const {
    double c[5];
    for (Index q = 0; q < n; ++q) {
      coeffs(q, c);
      out[q] = eval(c, theta);
    }
  }
};

/// Systems whose field is smooth only piecewise expose switching hooks (see above).
template <class S, class = void>
struct has_switching : std::false_type {};
template <class S>
struct has_switching<S, std::void_t<decltype(std::declval<S&>().switch_fraction(
                            std::declval<const DenseStep&>()))>> : std::true_type {};

/// Systems trained by minibatch descent expose minibatch(step): the batch of the 0-based
/// step whose direction the next field evaluation gives (gd only).
template <class S, class = void>
struct has_minibatch : std::false_type {};
template <class S>
struct has_minibatch<S, std::void_t<decltype(std::declval<S&>().minibatch(std::int64_t{}))>>
    : std::true_type {};

/// Systems with kFused = true advance whole Runge-Kutta steps themselves (start / step /
/// attempt / commit) instead of exposing one field evaluation per stage.
template <class S, class = void>
struct is_fused : std::false_type {};
template <class S>
struct is_fused<S, std::void_t<decltype(S::kFused)>> : std::bool_constant<S::kFused> {};

/// True once the user asked to stop. Only the thread that started the run (OpenMP
/// thread 0) calls the hook, and at most every interval_s, because the hook takes the GIL.
inline bool cancel_requested(CancelToken* cancel) {
  if (cancel == nullptr) return false;
  if (cancel->stop.load(std::memory_order_relaxed)) return true;
  if (cancel->poll && thread_num() == 0) {
    const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count();
    if (now - cancel->last_poll_ns >= static_cast<std::int64_t>(cancel->interval_s * 1e9)) {
      cancel->last_poll_ns = now;
      if (cancel->poll()) cancel->stop.store(true, std::memory_order_relaxed);
    }
  }
  return cancel->stop.load(std::memory_order_relaxed);
}

/// First time in (t0, t1] where the loss reaches `level`, from its values l0, l1 and time
/// derivatives d0, d1 at the ends of one step. The cubic Hermite interpolant is built for
/// log L when the loss is positive: gradient flow losses decay exponentially, which a cubic
/// in log L follows closely even over the long steps of dopri5.
inline double hermite_crossing(double t0, double t1, double l0, double l1, double d0, double d1,
                               double level) {
  const double h = t1 - t0;
  const bool use_log = l0 > 0 && l1 > 0 && level > 0;
  if (use_log) {
    d0 /= l0;
    d1 /= l1;
    l0 = std::log(l0);
    l1 = std::log(l1);
    level = std::log(level);
  }
  auto value = [&](double s) {
    const double s2 = s * s, s3 = s2 * s;
    return (2 * s3 - 3 * s2 + 1) * l0 + (s3 - 2 * s2 + s) * h * d0 + (-2 * s3 + 3 * s2) * l1 +
           (s3 - s2) * h * d1;
  };
  double lo = 0.0, hi = 1.0;
  for (int it = 0; it < 60; ++it) {
    const double mid = 0.5 * (lo + hi);
    (value(mid) > level ? lo : hi) = mid;
  }
  return t0 + hi * h;
}

/// Bookkeeping common to all steppers: loss threshold crossings and cancellation polls.
struct StepWatch {
  double level;
  bool discrete;  // gd: the crossing is the step index itself
  bool want_dloss() const { return level >= 0 && !discrete; }
  void after_step(Outcome& o, double t0, double t1, double l0, double l1, double d0,
                  double d1) const {
    if (level < 0 || !std::isnan(o.t_hit) || !(l1 <= level)) return;
    o.t_hit = discrete ? t1 : hermite_crossing(t0, t1, l0, l1, d0, d1, level);
  }
};

/// Marks the run failed at time t; records from slot j on become NaN.
template <class System>
Outcome& fail(System& sys, Outcome& o, Status status, double t, Index j, const double* y,
              bool params_all) {
  o.status = status;
  o.t_fail = t;
  sys.fail_from(j);
  // The state reached is kept (it is finite for a step limit): nothing computed is lost.
  if (!params_all) sys.record_params(y, 0);
  return o;
}

/// Records every slot whose time the adaptive run has reached (times[j] <= t), advancing
/// j; false once every slot is recorded.
template <class System>
bool record_reached(System& sys, const double* y, const Schedule& s, Index& j, double t,
                    bool params_all) {
  for (; j < s.n_times && s.times[j] <= t; ++j) {
    sys.record(y, j);
    if (params_all) sys.record_params(y, j);
  }
  return j < s.n_times;
}

/// Equal steps no longer than dt that cover `span` exactly (gd: span counts steps).
inline std::int64_t fixed_step_count(const Schedule& s, double span) {
  const double q = s.solver == Solver::gd ? std::round(span)
                                          : std::ceil(span / s.dt * (1.0 - 1e-12));
  // The Python layer refuses counts over max_steps; converting a double past 2^63 would be
  // undefined (x86 gives INT64_MIN, i.e. one huge step).
  if (!(q < 0x1p62)) throw std::length_error("fixed steps: more than 2^62 steps to a record time");
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(q));
}

/// Euler, classical rk4 and gradient descent. The flow is advanced between consecutive
/// record times in equal steps no longer than dt, so every record time is hit exactly.
/// For gd the clock counts steps and each step moves the state by lr * field.
template <class System>
Outcome integrate_fixed(System& sys, double* y, const Schedule& s, double* ws,
                        CancelToken* cancel, bool params_all) {
  const Index n = sys.size();
  double* k1 = ws;
  double* k2 = ws + n;
  double* k3 = ws + 2 * n;
  double* k4 = ws + 3 * n;
  double* tmp = ws + 4 * n;
  const bool gd = s.solver == Solver::gd;
  const bool rk4 = s.solver == Solver::rk4;
  const double scale = gd ? s.lr : 1.0;
  const StepWatch watch{s.loss_threshold, gd};
  constexpr bool fused = is_fused<System>::value;
  Outcome o;
  double d0 = 0.0, d1 = 0.0;
  double l0;
  auto next_batch = [&](std::int64_t step) {
    if constexpr (has_minibatch<System>::value)
      if (gd) sys.minibatch(step);
  };
  next_batch(0);
  if constexpr (fused)
    l0 = sys.start(y, watch.want_dloss(), &d0);
  else
    l0 = sys.field(y, k1, watch.want_dloss(), &d0);
  if (!std::isfinite(l0)) return fail(sys, o, Status::diverged, 0.0, 0, y, params_all);
  if (s.loss_threshold >= 0 && l0 <= s.loss_threshold) o.t_hit = 0.0;
  double t = 0.0;
  for (Index j = 0; j < s.n_times; ++j) {
    const double tj = s.times[j];
    if (tj > t) {
      const double span = tj - t;
      const std::int64_t nsteps = fixed_step_count(s, span);
      const double h = span / static_cast<double>(nsteps);
      const double hp = h * scale;
      const double t_start = t;
      for (std::int64_t i = 0; i < nsteps; ++i) {
        double l1;
        if constexpr (fused) {
          l1 = sys.step(y, hp, rk4 ? kRk4 : kEuler, watch.want_dloss(), &d1);
        } else {
        if (rk4) {
          for (Index q = 0; q < n; ++q) tmp[q] = y[q] + 0.5 * hp * k1[q];
          sys.field(tmp, k2, false, nullptr);
          for (Index q = 0; q < n; ++q) tmp[q] = y[q] + 0.5 * hp * k2[q];
          sys.field(tmp, k3, false, nullptr);
          for (Index q = 0; q < n; ++q) tmp[q] = y[q] + hp * k3[q];
          sys.field(tmp, k4, false, nullptr);
          const double w = hp / 6.0;
          for (Index q = 0; q < n; ++q) y[q] += w * (k1[q] + 2.0 * (k2[q] + k3[q]) + k4[q]);
        } else {
          for (Index q = 0; q < n; ++q) y[q] += hp * k1[q];
        }
        next_batch(o.steps + 1);
        l1 = sys.field(y, k1, watch.want_dloss(), &d1);
        }
        const double t_new = (i + 1 == nsteps) ? tj : t_start + static_cast<double>(i + 1) * h;
        ++o.steps;
        if (!std::isfinite(l1)) return fail(sys, o, Status::diverged, t_new, j, y, params_all);
        watch.after_step(o, t, t_new, l0, l1, d0, d1);
        t = t_new;
        l0 = l1;
        d0 = d1;
        if ((o.steps & 63) == 0 && cancel_requested(cancel)) throw Cancelled();
      }
    }
    sys.record(y, j);
    if (params_all) sys.record_params(y, j);
  }
  if (!params_all) sys.record_params(y, 0);
  return o;
}

/// Step-size control of the adaptive methods (Hairer, Norsett & Wanner I, II.4): the
/// next step is h (0.9 err^(-1/q)) within [h/5, grow h], q the order of the error
/// estimate plus one; no growth right after a rejection.
struct StepControl {
  double exponent = -0.2;  ///< -1/q (dopri5's: an order-4 estimate)
  double grow = 10.0;      ///< largest growth factor after an accepted step
  bool last_rejected = false;

  /// After an accepted step of length hs; keep_longer: hs was cut short to land on a
  /// record time, which says nothing against the longer step h.
  double accepted(double err, double hs, double h, bool keep_longer) {
    double fac = err == 0.0 ? grow : std::min(grow, std::max(0.2, 0.9 * std::pow(err, exponent)));
    if (last_rejected) fac = std::min(fac, 1.0);
    last_rejected = false;
    const double h_next = hs * fac;
    return keep_longer ? std::max(h_next, h) : h_next;
  }

  /// After a rejected step of length hs: the step to try next.
  double rejected(double err, double hs) {
    last_rejected = true;
    return hs * (std::isfinite(err) ? std::max(0.2, 0.9 * std::pow(err, exponent)) : 0.1);
  }

  /// A step this small no longer resolves anything: the run has failed at t. Trial steps
  /// that overflow mean the flow is blowing up; finite errors that stay above tolerance
  /// mean the tolerance cannot be met here (rounding noise above atol, a non-smooth
  /// field): said apart.
  static bool collapsed(double h, double t) { return !(h > 1e-14 * std::max(1.0, std::abs(t))); }
  static Status why(double err, double loss) {
    return std::isfinite(err) && std::isfinite(loss) ? Status::stalled : Status::diverged;
  }
};

/// Stiffness test of a dopri5 run: a step held near the stability boundary (h rho > 2.5,
/// the boundary on the negative real axis being ~3.3) for 15 accepted steps in a row
/// means stability, not accuracy, sets the step; the run then continues with Rodas4.
struct StiffSwitch {
  /// rho(0) t_max above which a run is handed over at t = 0 (~3e4 explicit steps).
  static constexpr double kStiffAtStart = 1e5;
  int flagged = 0;
  bool fired = false;
  double t = 0.0, h = 0.0;
  Index j = 0;
  double* y = nullptr;  ///< the state at t
  bool check(double h_step, double rho) {
    flagged = h_step * rho > 2.5 ? flagged + 1 : 0;
    return flagged >= 15;
  }
};

/// Systems that estimate the largest decay rate of their flow at the last accepted state
/// (double stiff_rate(const double* y)) can hand a stiff run over (StiffSwitch).
template <class S, class = void>
struct has_stiff_rate : std::false_type {};
template <class S>
struct has_stiff_rate<S, std::void_t<decltype(std::declval<S&>().stiff_rate(
                             std::declval<const double*>()))>> : std::true_type {};

/// Dormand-Prince 5(4) with FSAL, per-trajectory error control (RMS norm of
/// err_i / (atol + rtol max(|y_i|, |y_new_i|))) and steps shortened to land on record times.
template <class System>
Outcome integrate_dopri5(System& sys, double* y, const Schedule& s, double* ws,
                         CancelToken* cancel, bool params_all, StiffSwitch* sw = nullptr) {
  // Butcher tableau (Hairer, Norsett & Wanner, Solving ODEs I, Table 5.2).
  constexpr double a21 = 1.0 / 5, a31 = 3.0 / 40, a32 = 9.0 / 40, a41 = 44.0 / 45,
                   a42 = -56.0 / 15, a43 = 32.0 / 9, a51 = 19372.0 / 6561,
                   a52 = -25360.0 / 2187, a53 = 64448.0 / 6561, a54 = -212.0 / 729,
                   a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247,
                   a64 = 49.0 / 176, a65 = -5103.0 / 18656, b1 = 35.0 / 384, b3 = 500.0 / 1113,
                   b4 = 125.0 / 192, b5 = -2187.0 / 6784, b6 = 11.0 / 84;
  constexpr double e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920,
                   e5 = -17253.0 / 339200, e6 = 22.0 / 525, e7 = -1.0 / 40;
  const Index n = sys.size();
  double* k1 = ws;
  double* k2 = ws + n;
  double* k3 = ws + 2 * n;
  double* k4 = ws + 3 * n;
  double* k5 = ws + 4 * n;
  double* k6 = ws + 5 * n;
  double* k7 = ws + 6 * n;
  double* yt = ws + 7 * n;
  double* yn = ws + 8 * n;
  const StepWatch watch{s.loss_threshold, false};
  const double inv_n = 1.0 / static_cast<double>(n);
  constexpr bool fused = is_fused<System>::value;
  Outcome o;
  double d0 = 0.0, d1 = 0.0;
  double l0;
  if constexpr (fused) {
    l0 = sys.start(y, watch.want_dloss(), &d0);
    sys.field(y, k1, false, nullptr);  // for the starting-step heuristic only
  } else {
    l0 = sys.field(y, k1, watch.want_dloss(), &d0);
  }
  if (!std::isfinite(l0)) return fail(sys, o, Status::diverged, 0.0, 0, y, params_all);
  if (s.loss_threshold >= 0 && l0 <= s.loss_threshold) o.t_hit = 0.0;

  auto rms = [&](const double* v, const double* ref) {
    double acc = 0.0;
    for (Index q = 0; q < n; ++q) {
      const double r = v[q] / (s.atol + s.rtol * std::abs(ref[q]));
      acc += r * r;
    }
    return std::sqrt(acc * inv_n);
  };
  if constexpr (has_stiff_rate<System>::value) {
    // Stiff from the start: the initial kernel alone would hold dopri5 to more than
    // kStiffAtStart / 3.3 steps over the horizon; hand over before the first step.
    if (sw != nullptr && s.n_times > 0 &&
        sys.stiff_rate(y) * s.times[s.n_times - 1] > StiffSwitch::kStiffAtStart) {
      sw->fired = true;
      sw->y = y;
      return o;
    }
  }
  double h = s.h0;
  if (!(h > 0)) {  // Hairer's starting step (Solving ODEs I, II.4)
    const double dy0 = rms(y, y), df0 = rms(k1, y);
    double h0 = (dy0 < 1e-5 || df0 < 1e-5) ? 1e-6 : 0.01 * dy0 / df0;
    for (Index q = 0; q < n; ++q) yt[q] = y[q] + h0 * k1[q];
    sys.field(yt, k2, false, nullptr);
    for (Index q = 0; q < n; ++q) k3[q] = (k2[q] - k1[q]) / h0;
    const double ddf = rms(k3, y);
    const double big = std::max(df0, ddf);
    const double h1 = big <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / big, 0.2);
    h = std::min(100 * h0, h1);
    // With atol far below the scale of some component (e.g. atol = 1e-300 and u0 = 0) the
    // heuristic can propose steps near the subnormal range, where the error estimate is
    // noise and the run never leaves t = 0; rejections shrink a too-long step quickly.
    if (s.n_times > 0) h = std::max(h, 1e-12 * std::max(1.0, s.times[s.n_times - 1]));
  }
  double t = 0.0;
  StepControl control{-0.2, 10.0};  // order 4 estimate; growth capped at 10
  Index j = 0;
  while (record_reached(sys, y, s, j, t, params_all)) {
    const double tj = s.times[j];
    if (s.max_steps > 0 && o.steps + o.rejected >= s.max_steps)
      return fail(sys, o, Status::step_limit, t, j, y, params_all);
    // Land exactly on the record time; a step within 1% of it is stretched, not split.
    const bool landing = t + 1.01 * h >= tj;
    const double hs = landing ? tj - t : h;
    double l1, err;
    if constexpr (fused) {
      err = sys.attempt(y, yn, hs, s.rtol, s.atol, watch.want_dloss(), &l1, &d1);
    } else {
    for (Index q = 0; q < n; ++q) yt[q] = y[q] + hs * a21 * k1[q];
    sys.field(yt, k2, false, nullptr);
    for (Index q = 0; q < n; ++q) yt[q] = y[q] + hs * (a31 * k1[q] + a32 * k2[q]);
    sys.field(yt, k3, false, nullptr);
    for (Index q = 0; q < n; ++q) yt[q] = y[q] + hs * (a41 * k1[q] + a42 * k2[q] + a43 * k3[q]);
    sys.field(yt, k4, false, nullptr);
    for (Index q = 0; q < n; ++q)
      yt[q] = y[q] + hs * (a51 * k1[q] + a52 * k2[q] + a53 * k3[q] + a54 * k4[q]);
    sys.field(yt, k5, false, nullptr);
    for (Index q = 0; q < n; ++q)
      yt[q] = y[q] + hs * (a61 * k1[q] + a62 * k2[q] + a63 * k3[q] + a64 * k4[q] + a65 * k5[q]);
    sys.field(yt, k6, false, nullptr);
    for (Index q = 0; q < n; ++q)
      yn[q] = y[q] + hs * (b1 * k1[q] + b3 * k3[q] + b4 * k4[q] + b5 * k5[q] + b6 * k6[q]);
    l1 = sys.field(yn, k7, watch.want_dloss(), &d1);
    double acc = 0.0;
    for (Index q = 0; q < n; ++q) {
      const double ei = hs * (e1 * k1[q] + e3 * k3[q] + e4 * k4[q] + e5 * k5[q] + e6 * k6[q] +
                              e7 * k7[q]);
      const double sc = s.atol + s.rtol * std::max(std::abs(y[q]), std::abs(yn[q]));
      acc += (ei / sc) * (ei / sc);
    }
    err = std::sqrt(acc * inv_n);
    }
    double theta = 1.0;  // fraction of the step kept (< 1 at a switching event)
    if constexpr (has_switching<System>::value) {
      if (err <= 1.0 && std::isfinite(l1)) {
        // The field was evaluated on the smooth pieces in force at y. If a pre-activation
        // crossed its switching surface inside the step, the step is cut back to the first
        // crossing, located on the dense output, and the flow restarts there on the new
        // pieces: every accepted step integrates a smooth field (docs/theory.md §H).
        const DenseStep ds{y, yn, k1, k3, k4, k5, k6, k7, hs};
        theta = sys.switch_fraction(ds);
        if (theta < 1.0) {
          ds.state(theta, n, yn);
          ++o.events;
        }
        if (sys.update_modes(yn, theta == 1.0) || theta < 1.0)
          l1 = sys.field(yn, k7, watch.want_dloss(), &d1);
      }
    }
    const bool switched = theta < 1.0;
    if (err <= 1.0 && std::isfinite(l1)) {
      const double t_new = switched ? t + theta * hs : landing ? tj : t + hs;
      ++o.steps;
      watch.after_step(o, t, t_new, l0, l1, d0, d1);
      if constexpr (fused) sys.commit();
      std::swap(y, yn);  // pointers only: the caller's buffer is scratch from here on
      std::swap(k1, k7);
      t = t_new;
      l0 = l1;
      d0 = d1;
      h = control.accepted(err, hs, h, landing && !switched);
      if ((o.steps & 63) == 0 && cancel_requested(cancel)) throw Cancelled();
      if constexpr (has_stiff_rate<System>::value) {
        // Steps cut short to land on a record time say nothing about stability.
        if (sw != nullptr && !landing && sw->check(hs, sys.stiff_rate(y))) {
          sw->fired = true;
          sw->t = t;
          sw->j = j;
          sw->h = h;
          sw->y = y;
          return o;
        }
      }
    } else {
      ++o.rejected;
      h = control.rejected(err, hs);
      if (StepControl::collapsed(h, t))
        return fail(sys, o, StepControl::why(err, l1), t, j, y, params_all);
    }
  }
  if (!params_all) sys.record_params(y, 0);
  return o;
}

/// Runs the stepper selected by the schedule from the state in `y` (overwritten).
template <class System>
Outcome integrate(System& sys, double* y, const Schedule& s, double* ws, CancelToken* cancel,
                  bool params_all) {
  if (s.solver == Solver::rodas4 || s.solver == Solver::automatic)
    throw std::invalid_argument("rodas4 and automatic solver choice: linear networks only");
  if (s.solver == Solver::dopri5) return integrate_dopri5(sys, y, s, ws, cancel, params_all);
  return integrate_fixed(sys, y, s, ws, cancel, params_all);
}

}  // namespace ntkflow::detail
