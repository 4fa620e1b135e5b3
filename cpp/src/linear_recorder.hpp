// Records of a linear network from (p, a = ||u||^2, M = W^T W) (private header): shared by
// the full, fused and reduced systems so that all three write identical records.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "integrate.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow::detail {

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
      // u = 0 or W = 0 makes the Gram determinant zero: the layers count as parallel, so
      // a = 1 (THEORY §E.1, and what exact.line reports). Rounding can push the ratio a hair
      // above 1.
      // One neuron is aligned by definition; computing it would only show the integration
      // error of the reduced system, whose (p, M, a) do not know they come from one row.
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

}  // namespace ntkflow::detail
