// Public interface of the ntkflow core: plain C++17 + Eigen, no Python.
//
// Every array crossing this interface is a caller-owned, C-contiguous (row-major) float64
// buffer described by a raw pointer; shapes are given per field. The core never allocates
// record storage: the caller sizes it (and checks it against a memory budget) first.
#pragma once

#include <Eigen/Core>
#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

// A function the optimiser must not inline into its callers (see draw_initial).
#if defined(_MSC_VER) && !defined(__clang__)
#define NTKFLOW_NOINLINE __declspec(noinline)
#else
#define NTKFLOW_NOINLINE [[gnu::noinline]]
#endif

namespace ntkflow {

using Index = std::int64_t;
using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXd;

/// Per-trajectory outcome codes stored in `Records::status`. stalled: the adaptive step
/// size collapsed with finite errors above tolerance (the tolerance cannot be met there).
enum class Status : std::int8_t { ok = 0, diverged = 1, step_limit = 2, stalled = 3 };

/// Time steppers. `gd` is gradient descent: explicit Euler whose clock counts steps.
/// rodas4: the linearly implicit Rodas4 for stiff flows (linear networks). automatic:
/// dopri5 until its steps are held by stability, then Rodas4 (linear networks; see
/// Records::t_stiff).
enum class Solver : std::int32_t {
  euler = 0, rk4 = 1, dopri5 = 2, gd = 3, rodas4 = 4, automatic = 5
};

/// Raised (and turned into KeyboardInterrupt by the bindings) when the cancel hook fires.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("ntkflow: run cancelled") {}
};

/// Cooperative cancellation. `poll` is called only from the thread that started the run,
/// at most every `interval_s` seconds; any thread may read `stop`.
struct CancelToken {
  std::function<bool()> poll;
  double interval_s = 0.1;
  std::atomic<bool> stop{false};
  std::int64_t last_poll_ns = 0;  ///< touched by the starting thread only
  /// Trajectories finished so far (any thread adds, after each item of work), for a
  /// progress display read by `poll`. Never influences the results.
  std::atomic<std::int64_t> done{0};
};

/// Linear two-layer network f(x) = kappa u^T W x trained on population moments.
/// The loss is written as L = loss_min + 1/2 r^T Sigma r with r = kappa p - beta,
/// p = W^T u, beta = Sigma^+ b: algebraically the dataset loss of docs/theory.md §0 but free of
/// the cancellation in 1/2 kappa^2 p^T Sigma p - kappa p^T b + const near the minimum.
/// With weight decay the flow descends L + lambda_u/2 ||u||^2 + lambda_w/2 ||W||_F^2:
/// du/dt = -eta_u (dL/du + lambda_u u), dW/dt = -eta_w (dL/dW + lambda_w W); records keep L.
struct LinearModel {
  Index width = 1;           ///< m >= 1
  Index dim = 1;             ///< d >= 1
  double kappa = 1.0;        ///< output scale > 0
  double eta_u = 1.0;        ///< learning rate of u, >= 0
  double eta_w = 1.0;        ///< learning rate of W, >= 0
  double lambda_u = 0.0;     ///< weight decay of u, >= 0
  double lambda_w = 0.0;     ///< weight decay of W, >= 0
  const double* sigma = nullptr;  ///< (dim, dim) symmetric PSD second moment
  const double* beta = nullptr;   ///< (dim,) minimum-norm solution of Sigma beta = b
  double loss_min = 0.0;          ///< L* >= 0
  /// Outputs c of the network whose records a Recorder writes (the dataset path): p is then
  /// W^T U (dim x c) and the (dim, dim) NTK record exists only for c = 1.
  Index outputs = 1;
};

/// How initial parameters are obtained.
struct InitSpec {
  bool given = false;           ///< true: copy u0 / w0; false: draw Gaussians
  double s_u = 1.0;             ///< u_i ~ N(0, s_u^2)
  double s_w = 1.0;             ///< W_ik ~ N(0, s_w^2 / d)
  double correlation = 0.0;     ///< corr(u_i, W_ik) in [-1, 1]
  bool copy = false;            ///< W_ik = s_w / (s_u sqrt(d)) u_i exactly
  Index outputs = 1;            ///< c: U (width, c) from normals [0, m c) times s_u;
                                ///< correlation and copy need c = 1
  /// The last column of W is a first-layer bias (the inputs carry a constant 1 there):
  /// b_i = s_b * normal m c + m (dim - 1) + i, drawn after the weights, which keep the
  /// draws and the s_w / sqrt(dim - 1) scale of the network without bias.
  bool bias = false;
  double s_b = 0.0;
  std::uint64_t seed = 0;
  Index first_trajectory = 0;   ///< global index of the first trajectory of this call
  const double* u0 = nullptr;   ///< (trajectories, width, outputs) when given
  const double* w0 = nullptr;   ///< (trajectories, width, dim) when given
};

/// Time stepping and record schedule. For gd the clock counts steps: record_times are
/// whole step numbers and each step moves the parameters by `lr` times the flow field.
struct Schedule {
  Solver solver = Solver::dopri5;
  double dt = 0.01;             ///< euler / rk4: largest step; the step is shortened
                                ///< uniformly so that each record time is hit exactly
  double lr = 0.1;              ///< gd: learning rate
  double rtol = 1e-9, atol = 1e-12;  ///< dopri5 tolerances
  double h0 = 0.0;              ///< dopri5 first step, 0 = automatic (Hairer's rule)
  std::int64_t max_steps = 0;   ///< attempted-step limit per trajectory, 0 = none
  const double* times = nullptr;  ///< (n_times,) non-decreasing, >= 0
  Index n_times = 0;
  double loss_threshold = -1.0; ///< < 0: off; else record first time with loss <= it
  int threads = 0;              ///< 0: OpenMP default
};

/// Where results go. Null pointers are not recorded. Shapes use T = n_times.
struct Records {
  double* loss = nullptr;       ///< (n, T)
  double* p = nullptr;          ///< (n, T, d)
  double* norm_u2 = nullptr;    ///< (n, T)
  double* norm_w2 = nullptr;    ///< (n, T)
  double* alignment = nullptr;  ///< (n, T) ||W^T u|| / (||u|| ||W||_F)
  double* ntk = nullptr;        ///< (n, T, d, d) kappa^2 (eta_u W^T W + eta_w ||u||^2 I)
  double* drift = nullptr;      ///< (n, T) relative drift of eta_w ||u||^2 - eta_u ||W||^2
  /// Per-neuron conserved quantities delta_i = eta_w u_i^2 - eta_u ||w_i||^2 (docs/theory.md §E.5),
  /// from the parameters (not written by the reduced system, which has none):
  double* delta_mean = nullptr;   ///< (n, T) mean over neurons
  double* delta_std = nullptr;    ///< (n, T) population standard deviation over neurons
  double* delta_drift = nullptr;  ///< (n, T) max_i |delta_i(t) - delta_i(0)| divided by
                                  ///< max_i (eta_w u_i^2 + eta_u ||w_i||^2) at t
  double* deltas = nullptr;       ///< (n, T, m) every delta_i
  double* u = nullptr;          ///< (n, Tp, m) parameters, Tp = T if params_all else 1
  double* w = nullptr;          ///< (n, Tp, m, d)
  bool params_all = false;      ///< true: u, w at every record time; false: at the end
  std::int8_t* status = nullptr;    ///< (n,) Status
  double* t_fail = nullptr;         ///< (n,) time of divergence / step limit, NaN if ok
  std::int64_t* steps = nullptr;    ///< (n,) accepted steps
  std::int64_t* rejected = nullptr; ///< (n,) rejected dopri5 steps
  std::int64_t* events = nullptr;   ///< (n,) switching events located (relu with dopri5)
  double* t_hit = nullptr;          ///< (n,) first time loss <= threshold, NaN if never
  double* t_stiff = nullptr;        ///< (n,) time from which Rodas4 integrated the run (0:
                                    ///< from the start), NaN if it never did
};

/// How a linear network is integrated.
///  fused:     all m(1 + d) parameters, whole Runge-Kutta steps as one pass over them
///             (every stage state is the parameter matrix times a small matrix).
///  stagewise: all m(1 + d) parameters, one field evaluation per stage (textbook form).
///  reduced:   the width-independent system of docs/theory.md §B.1 for (W^T u, W^T W, ||u||^2);
///             out.u / out.w and the per-neuron records (delta_*) must be null (the
///             reduced state holds no parameters).
enum class LinearMethod : std::int32_t { fused = 0, stagewise = 1, reduced = 2 };

/// Integrate `trajectories` independent runs of a linear network into `out`.
/// Trajectory k is a pure function of (model, init.seed, init.first_trajectory + k,
/// schedule, method): OpenMP over trajectories never changes a bit. Throws Cancelled.
void simulate_linear(const LinearModel& model, const InitSpec& init, const Schedule& sched,
                     LinearMethod method, Index trajectories, const Records& out,
                     CancelToken* cancel);

/// Draw (or copy) initial parameters exactly as simulate_linear does.
/// u: (trajectories, width), w: (trajectories, width, dim), written in place.
void initial_params(const InitSpec& init, Index width, Index dim, Index trajectories,
                    double* u, double* w, int threads);

/// Compile-time facts about this build: instruction-set level, compiler, Eigen version.
std::string build_isa();
std::string build_compiler();
std::string eigen_version();
int max_threads();
/// Whether the core was compiled with OpenMP (false: a serial build, one thread always).
bool openmp();
/// Highest instruction-set level this CPU runs: "x86-64-v4", "x86-64-v3" or "baseline".
std::string cpu_best_isa();

}  // namespace ntkflow
