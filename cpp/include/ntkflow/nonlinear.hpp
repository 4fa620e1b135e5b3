// Two-layer networks with an activation and their NTK Gram matrices (THEORY §0 and §C.1). Plain C++17 + Eigen, no Python; conventions as in core.hpp.
#pragma once

#include <cstdint>

#include "ntkflow/core.hpp"

namespace ntkflow {

/// act and its derivative (THEORY §C.1): relu' = 1[z > 0] (0 at z = 0), tanh' = 1 - tanh^2,
/// erf' = 2/sqrt(pi) exp(-z^2), linear' = 1.
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

/// NTK Gram matrices of `batch` networks: u (batch, width), w (batch, width, dim), inputs
/// x1 (n1, dim) and x2 (n2, dim). Writes out (batch, n1, n2) = K(x1, x2); with x2 null,
/// out (batch, n1, n1) = K(x1, x1), computed on its lower triangle and mirrored (exactly
/// symmetric). OpenMP over the batch, or inside each matrix when batch < threads; the bits
/// do not depend on the thread count. Throws Cancelled (out then partly written).
void ntk_gram(const Network& net, const double* u, const double* w, Index batch,
              const double* x1, Index n1, const double* x2, Index n2, double* out,
              int threads, CancelToken* cancel = nullptr);

/// Bytes of scratch ntk_gram needs with this many threads.
double gram_workspace_bytes(const Network& net, Index batch, Index n1, Index n2, int threads);

}  // namespace ntkflow
