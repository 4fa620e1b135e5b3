// Weight decay of the linear systems (private header). With decay the flow descends
// L + lambda_u/2 ||u||^2 + lambda_w/2 ||W||_F^2, so every system adds -eta_u lambda_u u to
// du/dt and -eta_w lambda_w W to dW/dt. The systems test has_decay() once and keep their
// decay-free arithmetic untouched otherwise: lambda = 0 gives the same bits as before.
#pragma once

#include "ntkflow/core.hpp"

namespace ntkflow::detail {

inline bool has_decay(const LinearModel& md) { return md.lambda_u != 0.0 || md.lambda_w != 0.0; }

/// The rate at which decay shrinks p = W^T u: dp/dt gets -(eta_w lambda_w + eta_u lambda_u) p,
/// and dL/dt = -g . dp/dt (g = -dL/dp) gets + decay_rate * g . p.
inline double decay_rate(const LinearModel& md) {
  return md.eta_w * md.lambda_w + md.eta_u * md.lambda_u;
}

}  // namespace ntkflow::detail
