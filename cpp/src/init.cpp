// Initial parameters. Compiled with -ffp-contract=off so that every instruction-set build
// of the core draws the same bits for the same (seed, trajectory).
#include <algorithm>
#include <cmath>
#include <string>

#include "ntkflow/core.hpp"
#include "ntkflow/philox.hpp"
#include "threads.hpp"

namespace ntkflow {
namespace detail {

/// Trajectory k (local to this call) of an ensemble: u (width x outputs), w (width x dim,
/// row-major). Normals 0..mc-1 of the stream give U; normals mc..mc+m d_w-1 give the
/// independent part of the d_w = dim (- 1 with a bias) weight columns, so that for c = 1
/// W_ik = s_w / sqrt(d_w) (rho g_i + sqrt(1 - rho^2) h_ik) has corr(u_i, W_ik) = rho; the
/// next m normals give the biases (the last column) times s_b.
/// Never inlined: with link-time optimisation GCC inlined it into the SIMD-lane driver of
/// linear.cpp, whose code may contract a * b + c into an FMA, and the x86-64-v4 build then
/// drew correlated inits one ulp away from initial_params.
NTKFLOW_NOINLINE void draw_initial(const InitSpec& init, Index width, Index dim, Index k, double* u, double* w) {
  const Index m = width, d = dim, c = init.outputs;
  if (init.given) {
    std::copy(init.u0 + k * m * c, init.u0 + (k + 1) * m * c, u);
    std::copy(init.w0 + k * m * d, init.w0 + (k + 1) * m * d, w);
    return;
  }
  const Philox rng(init.seed, static_cast<std::uint64_t>(init.first_trajectory + k));
  const Index dw = init.bias ? d - 1 : d;  // weight columns; the bias is column dw
  const auto mc = static_cast<std::uint64_t>(m * c);
  rng.normals(0, mc, u);  // g
  const double sw = dw > 0 ? init.s_w / std::sqrt(static_cast<double>(dw)) : 0.0;
  if (init.copy) {
    const double ratio = sw / init.s_u;
    for (Index i = 0; i < m; ++i) u[i] *= init.s_u;
    for (Index i = 0; i < m; ++i)
      for (Index q = 0; q < dw; ++q) w[i * d + q] = ratio * u[i];
  } else {
    // h, drawn into the leading m dw entries of w and spread over the rows from the end
    // (row i moves to i d >= i dw: never over an entry still to be read).
    rng.normals(mc, static_cast<std::uint64_t>(m * dw), w);
    if (d != dw)
      for (Index i = m - 1; i >= 0; --i)
        for (Index q = dw - 1; q >= 0; --q) w[i * d + q] = w[i * dw + q];
    const double rho = init.correlation;
    const double rho_c = std::sqrt(std::max(0.0, 1.0 - rho * rho));
    if (c == 1) {
      for (Index i = 0; i < m; ++i) {
        const double gi = u[i];
        for (Index q = 0; q < dw; ++q) w[i * d + q] = sw * (rho * gi + rho_c * w[i * d + q]);
        u[i] = init.s_u * gi;
      }
    } else {  // correlation is 0 here (checked by the caller)
      for (Index q = 0; q < m * d; ++q) w[q] *= sw;
      for (Index q = 0; q < m * c; ++q) u[q] *= init.s_u;
    }
  }
  if (init.bias) {
    for (Index i = 0; i < m; ++i) {
      const double b = rng.normals_at(mc + static_cast<std::uint64_t>(m * dw + i));
      w[i * d + dw] = init.s_b * b;
    }
  }
}

}  // namespace detail

void initial_params(const InitSpec& init, Index width, Index dim, Index trajectories, double* u,
                    double* w, int threads) {
  [[maybe_unused]] const int nt = detail::team_threads(threads);  // unused when serial
#pragma omp parallel for schedule(static) num_threads(nt)
  for (Index k = 0; k < trajectories; ++k)
    detail::draw_initial(init, width, dim, k, u + k * width * init.outputs, w + k * width * dim);
}

std::string build_isa() {
#if defined(NTKFLOW_ISA_NAME)
  return NTKFLOW_ISA_NAME;
#else
  return "unknown";
#endif
}

std::string build_compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#else
  return "unknown";
#endif
}

std::string eigen_version() {
  return std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
         std::to_string(EIGEN_MINOR_VERSION);
}

int max_threads() { return detail::default_threads(); }

bool openmp() { return detail::kOpenMP; }

}  // namespace ntkflow

namespace ntkflow {

std::string cpu_best_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // libgcc's checks include the OS (XGETBV) support of the AVX / AVX-512 register state.
  const bool v3 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                  __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                  __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512cd");
  return v4 ? "x86-64-v4" : v3 ? "x86-64-v3" : "baseline";
#else
  return "baseline";
#endif
}

}  // namespace ntkflow
