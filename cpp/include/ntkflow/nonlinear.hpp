// Two-layer networks with an activation, trained on a dataset, and their NTK Gram matrices
// (docs/theory.md §0 and §C.1). Plain C++17 + Eigen, no Python; conventions as in core.hpp.
#pragma once

#include <cstdint>

#include "ntkflow/core.hpp"

namespace ntkflow {

/// act and its derivative (docs/theory.md §C.1): relu' = 1[z > 0] (0 at z = 0),
/// tanh' = 1 - tanh^2, erf' = 2/sqrt(pi) exp(-z^2), linear' = 1.
enum class Activation : std::int32_t { linear = 0, relu = 1, tanh = 2, erf = 3 };

/// f(x) = kappa * sum_i u_i act(w_i . x), trained with layer-wise learning rates.
struct Network {
  Index width = 1;  ///< m >= 1
  Index dim = 1;    ///< d >= 1
  Activation act = Activation::relu;
  double kappa = 1.0;  ///< output scale > 0
  double eta_u = 1.0;  ///< learning rate of u, >= 0 (also weights the NTK)
  double eta_w = 1.0;  ///< learning rate of W, >= 0
};

/// A training set; the loss is L = 1/(2 n) sum_j (f(x_j) - y_j)^2.
struct TrainingData {
  const double* x = nullptr;  ///< (samples, dim)
  const double* y = nullptr;  ///< (samples,)
  Index samples = 0;          ///< n >= 1
};

/// Records of simulate_network beyond `Records`; null pointers are not recorded.
/// Shapes use n = trajectories, T = n_times, samples of the training set.
struct KernelRecords {
  /// (n, T, g, g) the learning-rate-weighted NTK Gram matrix
  /// K = kappa^2 [eta_u H H^T + eta_w (G G^T) o (X X^T)] on the training set (g = samples),
  /// or on `probe` (g = n_probe) when it is given.
  double* gram = nullptr;
  const double* probe = nullptr;  ///< (n_probe, dim) probe inputs, or null
  Index n_probe = 0;
  /// (n, T) metrics of the training Gram K_t against K_0 (computed whether or not `gram`
  /// keeps it): ||K_t - K_0||_F / ||K_0||_F, 1 - <K_t, K_0>_F / (||K_t||_F ||K_0||_F) and the
  /// kernel-target alignment <K_t, y y^T>_F / (||K_t||_F ||y||^2). NaN where undefined (0/0).
  double* ntk_change = nullptr;
  double* kernel_distance = nullptr;
  double* kta = nullptr;
  double* move_u = nullptr;          ///< (n, T) ||u_t - u_0|| / ||u_0||
  double* move_w = nullptr;          ///< (n, T) ||W_t - W_0||_F / ||W_0||_F
  double* pattern_change = nullptr;  ///< (n, T) relu: fraction of units i with some
                                     ///< 1[w_i . x_j > 0] changed since t = 0
  /// (n, T) loss of the linearised network trained from the same initialisation: the
  /// residual obeys dr/dt = -(1/n) K_0 r (flow) or r <- (I - lr/n K_0) r (descent), solved
  /// exactly through the eigendecomposition of K_0 at the record times.
  double* loss_lin = nullptr;

  /// A held-out test set, evaluated at the record times; it never affects training.
  const double* test_x = nullptr;  ///< (n_test, dim), or null
  const double* test_y = nullptr;  ///< (n_test,)
  Index n_test = 0;
  /// (n, T) 1/(2 n_test) sum_j (f(x_j) - y_j)^2 on the test set (needs test_x).
  double* test_loss = nullptr;
  /// (n, T) classification error: the fraction of samples with sign(f(x_j)) != y_j, f = 0
  /// counting as an error. Meant for targets that are all +-1 (the caller decides).
  double* error = nullptr;       ///< on the training set
  double* test_error = nullptr;  ///< on the test set (needs test_x)
  /// (n, T) the linearised network on the test set: f_lin,t(x) = f_0(x) -
  /// K_0(x, X) V diag(h(lambda, t)) V^T r_0 with K_0 = V diag(lambda) V^T and
  /// h = (1 - exp(-lambda t / n)) / lambda (flow) or (lr / n) sum_{k<t} (1 - lr lambda / n)^k
  /// (descent); its test loss and error (needs test_x).
  double* test_loss_lin = nullptr;
  double* test_error_lin = nullptr;
  /// (n, T) twin gaps ||f_t - f_lin,t|| / ||f_0 - y|| over the training inputs and, for
  /// test_lin_gap, over the test inputs (numerator and denominator both on the test set);
  /// NaN where the denominator is 0.
  double* lin_gap = nullptr;
  double* test_lin_gap = nullptr;
};

/// Integrate `trajectories` independent runs of the full m(1 + d)-parameter network on a
/// dataset with the integrators of the linear path (euler, rk4, dopri5, gd). `out` holds the
/// records shared with simulate_linear: loss, p = W^T u, norm_u2, norm_w2, alignment, drift
/// (of eta_w ||u||^2 - eta_u ||W||_F^2, conserved by the flow for relu and linear only),
/// parameters, status/t_fail/steps/rejected/t_hit; `out.ntk` (dim x dim) only for the
/// linear activation. Trajectory k is a pure function of (inputs, init.seed,
/// init.first_trajectory + k, schedule): OpenMP never changes a bit. Throws Cancelled.
void simulate_network(const Network& net, const TrainingData& data, const InitSpec& init,
                      const Schedule& sched, Index trajectories, const Records& out,
                      const KernelRecords& kernel, CancelToken* cancel);

/// NTK Gram matrices of `batch` networks: u (batch, width), w (batch, width, dim), inputs
/// x1 (n1, dim) and x2 (n2, dim). Writes out (batch, n1, n2) = K(x1, x2); with x2 null,
/// out (batch, n1, n1) = K(x1, x1), computed on its lower triangle and mirrored (exactly
/// symmetric). OpenMP over the batch, or inside each matrix when batch < threads; the bits
/// do not depend on the thread count. Throws Cancelled (out then partly written).
void ntk_gram(const Network& net, const double* u, const double* w, Index batch,
              const double* x1, Index n1, const double* x2, Index n2, double* out,
              int threads, CancelToken* cancel = nullptr);

/// Bytes of scratch one thread of simulate_network needs (for the memory budget);
/// n_test = 0 without a test set.
double network_workspace_bytes(const Network& net, Index samples, Index n_probe, bool gram,
                               bool metrics, bool linearized, bool pattern, bool move,
                               Index n_test = 0);

/// Extra bytes of scratch one thread of simulate_network needs when a relu network is
/// integrated piece by piece (adaptive solver; docs/theory.md §H).
double piecewise_workspace_bytes(const Network& net, Index samples);

/// Bytes of scratch ntk_gram needs with this many threads.
double gram_workspace_bytes(const Network& net, Index batch, Index n1, Index n2, int threads);

}  // namespace ntkflow
