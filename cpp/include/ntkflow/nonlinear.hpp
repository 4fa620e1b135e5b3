// Two-layer networks with an activation, trained on a dataset, and their NTK Gram matrices
// (docs/theory.md §0 and §C.1). Plain C++17 + Eigen, no Python; conventions as in core.hpp.
#pragma once

#include <cstdint>

#include "ntkflow/core.hpp"

namespace ntkflow {

/// act and its derivative (docs/theory.md §C.1): relu' = 1[z > 0] (0 at z = 0),
/// tanh' = 1 - tanh^2, erf' = 2/sqrt(pi) exp(-z^2), linear' = 1.
enum class Activation : std::int32_t { linear = 0, relu = 1, tanh = 2, erf = 3 };

/// The per-sample loss l(f, y) of L = (1/n) sum_j l(f(x_j), y_j) (docs/theory.md §I):
///  square:   1/2 ||f - y||^2;
///  logistic: log(1 + exp(-y f)) for one output and labels y = +-1;
///  softmax:  logsumexp(f) - y . f for c >= 2 outputs and targets y on the simplex
///            (one-hot rows for class labels).
enum class Loss : std::int32_t { square = 0, logistic = 1, softmax = 2 };

/// F(x) = kappa * sum_i U_i act(w_i . x), U_i in R^c, trained with layer-wise learning rates
/// and weight decay: the flow is dU/dt = -eta_u (dL/dU + lambda_u U), dW/dt = -eta_w (dL/dW +
/// lambda_w W). A first-layer bias is a last input column of ones (the caller appends it),
/// so `dim` counts it and W's last column holds the biases.
struct Network {
  Index width = 1;    ///< m >= 1
  Index dim = 1;      ///< d >= 1 (with a bias: the inputs' dim + 1)
  Index outputs = 1;  ///< c >= 1
  Activation act = Activation::relu;
  Loss loss = Loss::square;
  double kappa = 1.0;  ///< output scale > 0
  double eta_u = 1.0;  ///< learning rate of U, >= 0 (also weights the NTK)
  double eta_w = 1.0;  ///< learning rate of W, >= 0
  double lambda_u = 0.0;  ///< weight decay of U, >= 0
  double lambda_w = 0.0;  ///< weight decay of W (and the biases), >= 0
};

/// A training set, and how descent feeds it: with batch > 0 each step of gradient descent
/// uses the minibatch drawn for (seed, trajectory, step) by sgd_batch, its targets plus
/// label_noise times fresh normals of the same stream (square loss only).
struct TrainingData {
  const double* x = nullptr;  ///< (samples, dim)
  const double* y = nullptr;  ///< (samples, outputs)
  Index samples = 0;          ///< n >= 1
  Index batch = 0;            ///< 0: full batch; else 1 <= batch (<= samples without replace)
  bool replace = false;       ///< draw the batch with replacement
  double label_noise = 0.0;   ///< standard deviation of the target noise, >= 0
};

/// The minibatch of step `step` (0-based) of trajectory `trajectory` (its global index) for a
/// seed: `batch` indices into [0, samples) written to out, drawn from Philox4x32-10 keyed by
/// (seed ^ 0x53474431, trajectory) at blocks (step << 32) | j. Without replacement: a partial
/// Fisher-Yates shuffle of 0..samples-1 by 64-bit words v_t (r = t + hi64(v_t (samples - t)));
/// with replacement: hi64(v_t samples). Word t is (c0 << 32 | c1) of block t / 2 for even t,
/// (c2 << 32 | c3) for odd t. The normals of the label noise come from blocks 2^31 + q / 2 of
/// the same step, by Philox::normal_pair.
void sgd_batch(std::uint64_t seed, Index trajectory, std::int64_t step, Index samples,
               Index batch, bool replace, Index* out);

/// Records of simulate_network beyond `Records`; null pointers are not recorded.
/// Shapes use n = trajectories, T = n_times, samples of the training set; with c outputs
/// a Gram matrix is over (input, output) pairs, index j c + a (so g = c samples or c n_probe).
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
  /// exactly through the eigendecomposition of K_0 at the record times. With minibatches
  /// the twin takes the network's batches and noisy targets y~ instead, stepped along:
  /// r <- r - (lr/|B|) K_0[:, B] (r_B - (y~_B - y_B)), O(n c |B| c) per step.
  double* loss_lin = nullptr;

  /// A held-out test set, evaluated at the record times; it never affects training.
  const double* test_x = nullptr;  ///< (n_test, dim), or null
  const double* test_y = nullptr;  ///< (n_test, outputs)
  Index n_test = 0;
  /// (n, T) 1/(2 n_test) sum_j (f(x_j) - y_j)^2 on the test set (needs test_x).
  double* test_loss = nullptr;
  /// (n, T) classification error: for one output the fraction of samples with
  /// sign(f(x_j)) != y_j, f = 0 counting as an error (targets +-1); for c >= 2 outputs the
  /// fraction whose argmax_a f_a(x_j) differs from argmax_a y_ja (one-hot targets). The
  /// caller asks for it only where the targets are labels.
  double* error = nullptr;       ///< on the training set
  double* test_error = nullptr;  ///< on the test set (needs test_x)
  /// (n, T) the linearised network on the test set: f_lin,t(x) = f_0(x) -
  /// K_0(x, X) V diag(h(lambda, t)) V^T r_0 with K_0 = V diag(lambda) V^T and
  /// h = (1 - exp(-lambda t / n)) / lambda (flow) or (lr / n) sum_{k<t} (1 - lr lambda / n)^k
  /// (descent), or stepped with K_0(X_test, X)[:, B] like the training residual
  /// (minibatches); its test loss and error (needs test_x).
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

/// NTK Gram matrices of `batch` networks: u (batch, width, outputs), w (batch, width, dim),
/// inputs x1 (n1, dim) and x2 (n2, dim). Writes out (batch, n1 c, n2 c) = K(x1, x2), index
/// j c + a for input j and output a; with x2 null, out (batch, n1 c, n1 c) = K(x1, x1),
/// exactly symmetric (computed on its lower blocks and mirrored). OpenMP over the batch, or inside each matrix when batch < threads; the bits
/// do not depend on the thread count. Throws Cancelled (out then partly written).
void ntk_gram(const Network& net, const double* u, const double* w, Index batch,
              const double* x1, Index n1, const double* x2, Index n2, double* out,
              int threads, CancelToken* cancel = nullptr);

/// Bytes of scratch one thread of simulate_network needs (for the memory budget);
/// n_test = 0 without a test set, batch = 0 for full-batch training.
double network_workspace_bytes(const Network& net, Index samples, Index n_probe, bool gram,
                               bool metrics, bool linearized, bool pattern, bool move,
                               Index n_test = 0, Index batch = 0);

/// Extra bytes of scratch one thread of simulate_network needs when a relu network is
/// integrated piece by piece (adaptive solver; docs/theory.md §H).
double piecewise_workspace_bytes(const Network& net, Index samples);

/// Bytes of scratch ntk_gram needs with this many threads.
double gram_workspace_bytes(const Network& net, Index batch, Index n1, Index n2, int threads);

}  // namespace ntkflow
