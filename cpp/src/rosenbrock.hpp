// Rodas4, a linearly implicit (Rosenbrock) method for stiff flows (private header).
//
// Large initialisations make the NTK large: the fast directions of the flow relax within
// 1/lambda_max while the slow ones need t_max, and an explicit method's steps stay below
// ~3.3/lambda_max for the whole run. Rodas4 is L-stable, so its steps follow accuracy
// alone. Each step solves six linear systems with the one matrix W = I/(h gamma) - J(y),
// J the exact Jacobian of the field at the step's start. A System taking this solver
// provides, besides the interface of integrate.hpp,
//   bool factor(const double* y, double c);  prepare solves with W = c I - J(y); false if
//                                            W is singular or not finite there
//   void solve(double* r);                   r <- W^{-1} r
// so that it can exploit its structure (never a dense matrix of the full state).
//
// Method: Hairer & Wanner, Solving ODEs II (2nd ed.), IV.7, the coefficients of RODAS
// (order 4, embedded order 3, stiffly accurate) in the form (7.25) that needs no matrix
// products: W U_i = f(y + sum_j a_ij U_j) + sum_j (c_ij / h) U_j, y_new = y + sum a_6j U_j
// + U_6, and the error estimate is U_6.
#pragma once

#include <algorithm>
#include <cmath>

#include "integrate.hpp"

namespace ntkflow::detail {

struct Rodas4 {
  static constexpr int kStages = 6;
  static constexpr double gamma = 0.25;
  // a[i][j], c[i][j] for j < i (row i = stage i + 1).
  static constexpr double a[6][5] = {
      {0, 0, 0, 0, 0},
      {1.544, 0, 0, 0, 0},
      {0.9466785280815826, 0.2557011698983284, 0, 0, 0},
      {3.314825187068521, 2.896124015972201, 0.9986419139977817, 0, 0},
      {1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 0},
      {1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0}};
  static constexpr double c[6][5] = {
      {0, 0, 0, 0, 0},
      {-5.6688, 0, 0, 0, 0},
      {-2.430093356833875, -0.2063599157091915, 0, 0, 0},
      {-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0, 0},
      {7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160, 0},
      {8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
       -6.058818238834054}};
};

/// Systems whose components are not all measured against their own size provide
/// void magnitudes(const double* y, const double* yn, double* mag): the scale each
/// component's error is relative to (mag >= max(|y|, |yn|) componentwise).
template <class S, class = void>
struct has_magnitudes : std::false_type {};
template <class S>
struct has_magnitudes<S, std::void_t<decltype(std::declval<S&>().magnitudes(
                             std::declval<const double*>(), std::declval<const double*>(),
                             std::declval<double*>()))>> : std::true_type {};

inline Index rodas_workspace_size(Index n) { return 9 * n; }

/// Where an integration starts: the time, the next record slot and the outcome so far (a
/// run handed over from dopri5 keeps its step counts).
struct Resume {
  double t = 0.0;
  Index j = 0;
  double h = 0.0;  ///< first step to try, 0 = automatic
};

/// Rodas4 with per-trajectory error control (RMS of U_6 / (atol + rtol max(|y|, |y_new|)))
/// and steps shortened to land on every record time, as integrate_dopri5 does.
template <class System>
Outcome integrate_rodas4(System& sys, double* y, const Schedule& s, double* ws,
                         CancelToken* cancel, bool params_all, Resume at = {},
                         Outcome o = {}) {
  using R = Rodas4;
  const Index n = sys.size();
  double* U[R::kStages];
  for (int i = 0; i < R::kStages; ++i) U[i] = ws + i * n;
  double* f0 = ws + 6 * n;  // f(y) at the step's start, stage 1's right-hand side
  double* yt = ws + 7 * n;
  double* yn = ws + 8 * n;
  const StepWatch watch{s.loss_threshold, false};
  const double inv_n = 1.0 / static_cast<double>(n);
  double d0 = 0.0, d1 = 0.0;
  double l0 = sys.field(y, f0, watch.want_dloss(), &d0);
  if (!std::isfinite(l0)) return fail(sys, o, Status::diverged, at.t, at.j, y, params_all);
  if (at.t == 0.0 && s.loss_threshold >= 0 && l0 <= s.loss_threshold) o.t_hit = 0.0;

  double h = at.h;
  if (!(h > 0)) {  // Hairer's starting step (Solving ODEs I, II.4), for order 4
    double dy0 = 0, df0 = 0;
    for (Index q = 0; q < n; ++q) {
      const double sc = s.atol + s.rtol * std::abs(y[q]);
      dy0 += (y[q] / sc) * (y[q] / sc);
      df0 += (f0[q] / sc) * (f0[q] / sc);
    }
    dy0 = std::sqrt(dy0 * inv_n);
    df0 = std::sqrt(df0 * inv_n);
    h = (dy0 < 1e-5 || df0 < 1e-5) ? 1e-6 : 0.01 * dy0 / df0;
    if (s.n_times > 0) h = std::max(h, 1e-12 * std::max(1.0, s.times[s.n_times - 1]));
  }
  double t = at.t;
  StepControl control{-0.25, 6.0};  // order 3 estimate; growth capped at 6 (rodas.f)
  bool factored_for = false;  // W is factored at y for the current h
  double h_factored = 0.0;
  Index j = at.j;
  while (record_reached(sys, y, s, j, t, params_all)) {
    const double tj = s.times[j];
    if (s.max_steps > 0 && o.steps + o.rejected >= s.max_steps)
      return fail(sys, o, Status::step_limit, t, j, y, params_all);
    const bool landing = t + 1.01 * h >= tj;
    const double hs = landing ? tj - t : h;
    double err = kInf, l1 = kNaN;
    if (!(factored_for && h_factored == hs)) {
      factored_for = sys.factor(y, 1.0 / (hs * R::gamma));
      h_factored = hs;
    }
    if (factored_for) {
      for (int i = 0; i < R::kStages; ++i) {
        const double* rhs_f = f0;
        if (i > 0) {
          for (Index q = 0; q < n; ++q) {
            double acc = y[q];
            for (int k = 0; k < i; ++k) acc += R::a[i][k] * U[k][q];
            yt[q] = acc;
          }
          sys.field(yt, U[i], false, nullptr);
          rhs_f = U[i];
        }
        for (Index q = 0; q < n; ++q) {
          double acc = rhs_f[q];
          for (int k = 0; k < i; ++k) acc += (R::c[i][k] / hs) * U[k][q];
          U[i][q] = acc;
        }
        sys.solve(U[i]);
      }
      // Stiffly accurate: y_new is the last stage point plus U_6, and U_6 is the error.
      for (Index q = 0; q < n; ++q) yn[q] = yt[q] + U[5][q];
      double acc = 0.0;
      if constexpr (has_magnitudes<System>::value) {
        sys.magnitudes(y, yn, yt);  // the stage point is no longer needed
        for (Index q = 0; q < n; ++q) {
          const double sc = s.atol + s.rtol * yt[q];
          acc += (U[5][q] / sc) * (U[5][q] / sc);
        }
      } else {
        for (Index q = 0; q < n; ++q) {
          const double sc = s.atol + s.rtol * std::max(std::abs(y[q]), std::abs(yn[q]));
          acc += (U[5][q] / sc) * (U[5][q] / sc);
        }
      }
      err = std::sqrt(acc * inv_n);
      // The new start's field is the next step's first right-hand side (kept in U[0]
      // until accepted: a rejected step keeps f0).
      if (std::isfinite(err)) l1 = sys.field(yn, U[0], watch.want_dloss(), &d1);
    }
    if (err <= 1.0 && std::isfinite(l1)) {
      const double t_new = landing ? tj : t + hs;
      ++o.steps;
      watch.after_step(o, t, t_new, l0, l1, d0, d1);
      std::swap(y, yn);
      std::swap(f0, U[0]);
      t = t_new;
      l0 = l1;
      d0 = d1;
      factored_for = false;
      h = control.accepted(err, hs, h, landing);
      if ((o.steps & 63) == 0 && cancel_requested(cancel)) throw Cancelled();
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

}  // namespace ntkflow::detail
