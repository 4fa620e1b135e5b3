// Fused Runge-Kutta steps for linear two-layer networks (private header).
//
// Neuron i's parameters form a row theta_i = (u_i, w_i) in R^{1+d}, and given the
// residual direction g the flow moves every row by the same matrix:
//     d theta_i / dt = theta_i J(g),   J(g) = [[0, eta_w g^T], [eta_u g, 0]].
// Every Runge-Kutta stage state is therefore Theta S_s for a (1+d) x (1+d) matrix S_s, and
// the only data a stage needs, p_s = W_s^T u_s, follows from the Gram matrix
// Gram = Theta^T Theta = [[a, p^T], [p, M]] as S_s[:,1:]^T Gram S_s[:,0]. A whole step is then
// O(d^3) small-matrix work plus ONE pass over the m(1+d) parameters (apply the step matrix
// and accumulate the next Gram) instead of a dozen full-vector passes. It is the same
// explicit Runge-Kutta method applied to all m(1+d) parameters; only rounding differs.
//
// Weight decay keeps this structure: it adds -eta_u lambda_u to J[0,0] and -eta_w lambda_w I
// to J[1:,1:], so every stage state stays in the span of the columns of Theta.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>

#include "integrate.hpp"
#include "ensemble.hpp"
#include "linear_decay.hpp"
#include "linear_stiff.hpp"
#include "ntkflow/core.hpp"

namespace ntkflow::detail {

/// Full-parameter linear network with fused steps. Q = 1 + d at compile time (2 for
/// model A) or Eigen::Dynamic; all small matrices are sized once, in the constructor.
template <int Q>
class LinearFused {
 public:
  static constexpr bool kFused = true;
  // d at compile time too: with Eigen::Dynamic the per-step small-matrix algebra goes
  // through Eigen's general product kernels (~200 ns a step), which at width 64 costs as
  // much as the pass over the parameters itself.
  static constexpr int D = Q == Eigen::Dynamic ? Eigen::Dynamic : Q - 1;
  using Small = Eigen::Matrix<double, Q, Q>;
  using SmallVec = Eigen::Matrix<double, Q, 1>;
  using DVec = Eigen::Matrix<double, D, 1>;
  using DMat = Eigen::Matrix<double, D, D, Eigen::RowMajor>;

  static Index state_size(const LinearModel& md) { return md.width * (1 + md.dim); }
  static Index scratch_size(const LinearModel&) { return 0; }

  LinearFused(const LinearModel& md, const Records& out, Index row, Index n_times, double*,
              NeuronRecorder* neurons)
      : md_(md), out_(out), rec_(md, out, row, n_times), neurons_(neurons), row_(row),
        T_(n_times),
        m_(md.width), d_(md.dim), q_(1 + md.dim), decay_(has_decay(md)) {
    for (Small* s : {&gram_, &gram_next_, &S_, &T_step_, &E_}) s->setZero(q_, q_);
    for (auto& k : K_) k.setZero(q_, q_);
    v_.setZero(q_);
    p_.setZero(d_);
    r_.setZero(d_);
    sr_.setZero(d_);
    g_.setZero(d_);
    mg_.setZero(d_);
    row_buf_.setZero(d_);
    M_.setZero(d_, d_);
  }

  Index size() const { return m_ * q_; }

  /// Gram of y; returns the loss there.
  double start(const double* y, bool want_dloss, double* dl) {
    accumulate_gram(y, gram_);
    rec_.set_reference(gram_(0, 0), gram_.bottomRightCorner(d_, d_).trace());
    return loss_from(gram_, want_dloss, dl);
  }

  /// Plain field evaluation (used by dopri5's starting-step heuristic).
  double field(const double* y, double* dy, bool want_dloss, double* dl) {
    Small gram;
    gram.setZero(q_, q_);
    accumulate_gram(y, gram);
    const double loss = loss_from(gram, want_dloss, dl);
    S_.setIdentity(q_, q_);
    K_[0].setZero(q_, q_);
    add_field_matrix(S_, g_, K_[0]);
    apply(y, K_[0], dy, nullptr);
    return loss;
  }

  /// One step of a fixed-step tableau on y in place; returns the loss at the new state.
  double step(double* y, double h, const Tableau& tab, bool want_dloss, double* dl) {
    stages(tab, h);
    T_step_.setIdentity(q_, q_);
    for (int s = 0; s < tab.stages; ++s)
      if (tab.b[s] != 0.0) T_step_ += (h * tab.b[s]) * K_[s];
    apply(y, T_step_, y, &gram_);
    return loss_from(gram_, want_dloss, dl);
  }

  /// One dopri5 attempt from y into yn; returns the RMS error norm, *l1 the loss at yn.
  /// commit() adopts yn's Gram once the caller accepts the step.
  double attempt(const double* y, double* yn, double h, double rtol, double atol,
                 bool want_dloss, double* l1, double* dl) {
    stages(kDopri5, h);  // stage 7 of dopri5 is evaluated at the 5th-order solution
    T_step_ = S_last_;
    E_.setZero(q_, q_);
    for (int s = 0; s < 7; ++s) E_ += (h * kDopri5.e[s]) * K_[s];
    const double err = apply_checked(y, yn, rtol, atol);
    *l1 = loss_from(gram_next_, want_dloss, dl);
    return err;
  }
  void commit() { gram_ = gram_next_; }
  /// For the stiffness test: the rate at the last committed state, from its Gram.
  double stiff_rate(const double*) {
    return rate_(md_, gram_(0, 0), gram_.template block<D, D>(1, 1, d_, d_));
  }

  void record(const double* y, Index j) {
    p_ = gram_.template block<D, 1>(1, 0, d_, 1);
    M_ = gram_.template block<D, D>(1, 1, d_, d_);
    rec_.write(j, p_.data(), gram_(0, 0), M_.data(), rec_.loss(p_.data(), r_.data(), sr_.data()));
    neurons_->write(row_, j, contiguous_neurons(y, y + m_, d_));  // one pass, at records only
  }
  void record_params(const double* y, Index slot) {
    if (out_.u == nullptr && out_.w == nullptr) return;
    const Index tp = out_.params_all ? T_ : 1;
    const Index at = row_ * tp + slot;
    if (out_.u) std::copy(y, y + m_, out_.u + at * m_);
    if (out_.w) std::copy(y + m_, y + m_ * q_, out_.w + at * m_ * d_);
  }
  void fail_from(Index j) { rec_.fail_from(j); }
  void load(const double* u, const double* w, double* y) {
    std::copy(u, u + m_, y);
    std::copy(w, w + m_ * d_, y + m_);
    neurons_->reference(contiguous_neurons(u, w, d_));
  }

 private:
  /// g = -kappa Sigma (kappa p - beta) for p of the stage with matrix S.
  void stage_g(const Small& S) {
    v_.noalias() = gram_ * S.col(0);
    p_.noalias() = S.template block<Q, D>(0, 1, q_, d_).transpose() * v_;
    direction_from_p();
  }
  void direction_from_p() {
    const Eigen::Map<const DMat> sigma(md_.sigma, d_, d_);
    r_ = md_.kappa * p_ - Eigen::Map<const DVec>(md_.beta, d_);
    sr_.noalias() = sigma * r_;
    g_ = -md_.kappa * sr_;
  }

  /// K += S J(g): column 0 gets S[:,1:] eta_u g, columns 1: get S[:,0] eta_w g^T; with
  /// decay also -eta_u lambda_u S[:,0] and -eta_w lambda_w S[:,1:].
  void add_field_matrix(const Small& S, const DVec& g, Small& K) const {
    K.col(0).noalias() += md_.eta_u * (S.template block<Q, D>(0, 1, q_, d_) * g);
    K.template block<Q, D>(0, 1, q_, d_).noalias() += (md_.eta_w * S.col(0)) * g.transpose();
    if (decay_) {
      K.col(0) -= (md_.eta_u * md_.lambda_u) * S.col(0);
      K.template block<Q, D>(0, 1, q_, d_) -=
          (md_.eta_w * md_.lambda_w) * S.template block<Q, D>(0, 1, q_, d_);
    }
  }

  void stages(const Tableau& tab, double h) {
    for (int s = 0; s < tab.stages; ++s) {
      S_.setIdentity(q_, q_);
      for (int j = 0; j < s; ++j)
        if (tab.a[s][j] != 0.0) S_ += (h * tab.a[s][j]) * K_[j];
      stage_g(S_);
      K_[s].setZero(q_, q_);
      add_field_matrix(S_, g_, K_[s]);
    }
    S_last_ = S_;  // for dopri5 the last stage matrix is the 5th-order step matrix
  }

  double loss_from(const Small& gram, bool want_dloss, double* dl) {
    p_ = gram.template block<D, 1>(1, 0, d_, 1);
    direction_from_p();
    const double loss = md_.loss_min + 0.5 * r_.dot(sr_);
    if (want_dloss) {
      mg_.noalias() = gram.template block<D, D>(1, 1, d_, d_) * g_;
      *dl = -(md_.eta_w * gram(0, 0) * g_.squaredNorm() + md_.eta_u * g_.dot(mg_));
      if (decay_) *dl += decay_rate(md_) * g_.dot(p_);  // grad L . theta_dot with decay
    }
    return loss;
  }

  void accumulate_gram(const double* y, Small& gram) const {
    if constexpr (Q == 2) {
      const double* u = y;
      const double* w = y + m_;
      double a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
      for (Index i = 0; i < m_; ++i) {
        a += u[i] * u[i];
        b += w[i] * w[i];
        c += u[i] * w[i];
      }
      gram << a, c, c, b;
    } else {
      const Eigen::Map<const Eigen::VectorXd> u(y, m_);
      const Eigen::Map<const RowMatrix> W(y + m_, m_, d_);
      gram(0, 0) = u.squaredNorm();
      gram.col(0).tail(d_).noalias() = W.transpose() * u;
      gram.row(0).tail(d_) = gram.col(0).tail(d_).transpose();
      gram.bottomRightCorner(d_, d_).noalias() = W.transpose() * W;
    }
  }

  /// out = Theta(y) T (out may alias y); with `gram`, also the Gram of the result.
  void apply(const double* y, const Small& T, double* out, Small* gram) {
    if constexpr (Q == 2) {
      const double t00 = T(0, 0), t01 = T(0, 1), t10 = T(1, 0), t11 = T(1, 1);
      const double* u = y;
      const double* w = y + m_;
      double* uo = out;
      double* wo = out + m_;
      double a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
      for (Index i = 0; i < m_; ++i) {
        const double un = t00 * u[i] + t10 * w[i];
        const double wn = t01 * u[i] + t11 * w[i];
        uo[i] = un;
        wo[i] = wn;
        a += un * un;
        b += wn * wn;
        c += un * wn;
      }
      if (gram) *gram << a, c, c, b;
    } else {
      apply_dynamic(y, T, out);
      if (gram) accumulate_gram(out, *gram);
    }
  }

  void apply_dynamic(const double* y, const Small& T, double* out) {
    // Row i of [u, W] times T, in place-safe order: new u needs old W, new W needs old u.
    for (Index i = 0; i < m_; ++i) {
      const double ui = y[i];
      const double* wi = y + m_ + i * d_;
      double un = T(0, 0) * ui;
      for (Index c = 0; c < d_; ++c) un += wi[c] * T(1 + c, 0);
      for (Index k = 0; k < d_; ++k) {
        double acc = ui * T(0, 1 + k);
        for (Index c = 0; c < d_; ++c) acc += wi[c] * T(1 + c, 1 + k);
        row_buf_[k] = acc;
      }
      out[i] = un;
      std::copy(row_buf_.data(), row_buf_.data() + d_, out + m_ + i * d_);
    }
  }

  /// yn = Theta(y) T_step_ with the RMS of (Theta(y) E_) / (atol + rtol max(|y|, |yn|)),
  /// and the Gram of yn into gram_next_: one pass.
  double apply_checked(const double* y, double* yn, double rtol, double atol) {
    double acc = 0.0;
    if constexpr (Q == 2) {
      const double t00 = T_step_(0, 0), t01 = T_step_(0, 1), t10 = T_step_(1, 0),
                   t11 = T_step_(1, 1);
      const double e00 = E_(0, 0), e01 = E_(0, 1), e10 = E_(1, 0), e11 = E_(1, 1);
      const double* u = y;
      const double* w = y + m_;
      double* uo = yn;
      double* wo = yn + m_;
      double a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c, acc)
      for (Index i = 0; i < m_; ++i) {
        const double un = t00 * u[i] + t10 * w[i];
        const double wn = t01 * u[i] + t11 * w[i];
        const double eu = (e00 * u[i] + e10 * w[i]) /
                          (atol + rtol * std::max(std::abs(u[i]), std::abs(un)));
        const double ew = (e01 * u[i] + e11 * w[i]) /
                          (atol + rtol * std::max(std::abs(w[i]), std::abs(wn)));
        uo[i] = un;
        wo[i] = wn;
        a += un * un;
        b += wn * wn;
        c += un * wn;
        acc += eu * eu + ew * ew;
      }
      gram_next_ << a, c, c, b;
    } else {
      apply_dynamic(y, T_step_, yn);
      for (Index i = 0; i < m_; ++i) {
        const double ui = y[i];
        const double* wi = y + m_ + i * d_;
        for (Index k = 0; k < q_; ++k) {
          double err = ui * E_(0, k);
          for (Index c = 0; c < d_; ++c) err += wi[c] * E_(1 + c, k);
          const double old = k == 0 ? ui : wi[k - 1];
          const double nw = k == 0 ? yn[i] : yn[m_ + i * d_ + k - 1];
          const double sc = atol + rtol * std::max(std::abs(old), std::abs(nw));
          acc += (err / sc) * (err / sc);
        }
      }
      accumulate_gram(yn, gram_next_);
    }
    return std::sqrt(acc / static_cast<double>(m_ * q_));
  }

  const LinearModel& md_;
  const Records& out_;
  Recorder rec_;
  NeuronRecorder* neurons_;
  Index row_, T_, m_, d_, q_;
  bool decay_;
  Small gram_, gram_next_, S_, S_last_, T_step_, E_;
  std::array<Small, 7> K_;
  SmallVec v_;
  DVec p_, r_, sr_, g_, mg_;
  Eigen::VectorXd row_buf_;
  DMat M_;
  StiffRate rate_{d_};
};

}  // namespace ntkflow::detail
