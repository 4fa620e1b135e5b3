// NTK Gram matrices: block kernels (see gram.hpp) and the batched, OpenMP-parallel ntk_gram.
#include "gram.hpp"

#include "integrate.hpp"  // cancel_requested
#include "threads.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <stdexcept>

namespace ntkflow {
namespace detail {

namespace {

constexpr double kTwoOverSqrtPi = 1.1283791670955126;  // erf'(0)

inline Index block_rows(Index n, Index b) { return std::min(kGramBlock, n - b * kGramBlock); }

// The distinct block heights of n rows: a full block and the remainder.
template <class F>
void for_each_height(Index n, F&& f) {
  if (n <= 0) return;
  f(std::min(n, kGramBlock));
  if (n > kGramBlock && n % kGramBlock != 0) f(n % kGramBlock);
}

}  // namespace

void GramScratch::reserve(const Network& net, Index n1, Index n2) {
  const Index m = net.width, d = net.dim;
  tile_g.resize(static_cast<std::size_t>(kGramBlock * kGramBlock));
  tile_c.resize(static_cast<std::size_t>(kGramBlock * kGramBlock));
  cwu.resize(static_cast<std::size_t>(m));
  lin_a.resize(static_cast<std::size_t>(d * d));
  reserve_gemm(net, n1, n2);
}

void GramScratch::reserve_gemm(const Network& net, Index n1, Index n2) {
  const Index m = net.width, d = net.dim;
  if (net.act == Activation::linear) {
    gemm.reserve(d, d, m);  // W^T W
    for (Index n : {n1, n2}) for_each_height(n, [&](Index r) { gemm.reserve(r, d, d); });
    for_each_height(n1, [&](Index r1) {
      for_each_height(n2, [&](Index r2) { gemm.reserve(r1, r2, d); });
    });
    return;
  }
  for (Index n : {n1, n2}) for_each_height(n, [&](Index r) { gemm.reserve(r, m, d); });
  for_each_height(n1, [&](Index r1) {
    for_each_height(n2, [&](Index r2) {
      gemm.reserve(r1, r2, m);
      gemm.reserve(r1, r2, d);
    });
    if (n1 == n2) gemm.reserve_lower(r1, m);  // diagonal blocks of a symmetric Gram
  });
}

void gram_prepare(const Network& net, const double* u, const double* w, GramScratch& s) {
  const Index m = net.width, d = net.dim;
  const double k2 = net.kappa * net.kappa;
  if (net.act == Activation::linear) {
    double* A = s.lin_a.data();
    s.gemm.run<Eigen::ColMajor, Eigen::RowMajor>(d, d, m, w, d, w, d, A, d, k2 * net.eta_u,
                                                 false);
    const double u2 = Eigen::Map<const Eigen::VectorXd>(u, m).squaredNorm();
    for (Index a = 0; a < d; ++a) A[a * d + a] += k2 * net.eta_w * u2;
    return;
  }
  const double cw = net.kappa * std::sqrt(net.eta_w);
  for (Index i = 0; i < m; ++i) s.cwu[i] = cw * u[i];
}

void gram_features(const Network& net, const double* w, const GramFeatures& f, Index r0,
                   Index r1, GramScratch& s) {
  const Index m = net.width, d = net.dim, rows = r1 - r0;
  if (rows <= 0) return;
  if (net.act == Activation::linear) {
    s.gemm.run<Eigen::RowMajor, Eigen::RowMajor>(rows, d, d, f.x + r0 * d, d, s.lin_a.data(), d,
                                                 f.hs + r0 * d, d, 1.0, false);
    return;
  }
  double* H = f.hs + r0 * m;
  double* G = f.gs + r0 * m;
  s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(rows, m, d, f.x + r0 * d, d, w, d, H, m, 1.0,
                                               false);
  const double cu = net.kappa * std::sqrt(net.eta_u);
  const double* cwu = s.cwu.data();
  // Row by row so that the inner loops vectorise (relu) or at least stream (tanh, erf).
  for (Index r = 0; r < rows; ++r) {
    double* h = H + r * m;
    double* g = G + r * m;
    switch (net.act) {
      case Activation::relu:
        for (Index i = 0; i < m; ++i) {
          const double z = h[i];
          g[i] = z > 0 ? cwu[i] : 0.0;
          h[i] = z > 0 ? cu * z : 0.0;
        }
        break;
      case Activation::tanh:
        for (Index i = 0; i < m; ++i) {
          const double t = std::tanh(h[i]);
          g[i] = cwu[i] * (1.0 - t * t);
          h[i] = cu * t;
        }
        break;
      case Activation::erf:
        for (Index i = 0; i < m; ++i) {
          const double z = h[i];
          g[i] = cwu[i] * (kTwoOverSqrtPi * std::exp(-z * z));
          h[i] = cu * std::erf(z);
        }
        break;
      case Activation::linear:
        break;
    }
  }
}

void gram_block(const Network& net, const GramFeatures& f1, const GramFeatures& f2, Index bi,
                Index bj, double* out, Index ldo, GramScratch& s, bool lower) {
  const Index m = net.width, d = net.dim;
  const Index i0 = bi * kGramBlock, j0 = bj * kGramBlock;
  const Index ni = block_rows(f1.n, bi), nj = block_rows(f2.n, bj);
  double* o = out + i0 * ldo + j0;
  if (net.act == Activation::linear) {  // O(n^2 d): the full block
    s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(ni, nj, d, f1.hs + i0 * d, d, f2.x + j0 * d, d,
                                                 o, ldo, 1.0, false);
    return;
  }
  // o = Hs_I Hs_J^T (lower triangle only on a diagonal block); eta = 0 leaves zero
  // features: skip their products (O(n^2 m) each).
  auto product = [&](const double* a, const double* b, double* c, Index ldc) {
    if (lower)
      s.gemm.run_lower<Eigen::RowMajor, Eigen::ColMajor>(ni, m, a, m, b, m, c, ldc, 1.0, false);
    else
      s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(ni, nj, m, a, m, b, m, c, ldc, 1.0, false);
  };
  if (net.eta_u > 0) {
    product(f1.hs + i0 * m, f2.hs + j0 * m, o, ldo);
  } else {
    for (Index i = 0; i < ni; ++i) std::fill(o + i * ldo, o + i * ldo + nj, 0.0);
  }
  if (!(net.eta_w > 0)) return;
  double* tg = s.tile_g.data();
  double* tc = s.tile_c.data();
  product(f1.gs + i0 * m, f2.gs + j0 * m, tg, nj);
  s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(ni, nj, d, f1.x + i0 * d, d, f2.x + j0 * d, d, tc,
                                               nj, 1.0, false);
  for (Index i = 0; i < ni; ++i) {
    double* oi = o + i * ldo;
    const double* gi = tg + i * nj;
    const double* ci = tc + i * nj;
    const Index jend = lower ? i + 1 : nj;
    for (Index j = 0; j < jend; ++j) oi[j] += gi[j] * ci[j];
  }
}

void gram_mirror(Index n, Index bi, Index bj, double* out) {
  const Index i0 = bi * kGramBlock, j0 = bj * kGramBlock;
  const Index ni = block_rows(n, bi), nj = block_rows(n, bj);
  for (Index i = i0; i < i0 + ni; ++i) {
    const Index jend = bi == bj ? i : j0 + nj;
    for (Index j = j0; j < jend; ++j) out[j * n + i] = out[i * n + j];
  }
}

void gram_serial(const Network& net, const double* u, const double* w, const double* x1,
                 Index n1, const double* x2, Index n2, double* hs, double* gs, GramScratch& s,
                 double* out) {
  const bool sym = x2 == nullptr;
  GramFeatures f1{x1, n1, hs, gs};
  GramFeatures f2 = f1;
  if (!sym) {
    const Index off = gram_feature_size(net, n1);
    f2 = GramFeatures{x2, n2, hs + off, gs + off};
  }
  gram_prepare(net, u, w, s);
  for (Index b = 0; b < gram_blocks(n1); ++b)
    gram_features(net, w, f1, b * kGramBlock, b * kGramBlock + block_rows(n1, b), s);
  if (!sym && net.act != Activation::linear)
    for (Index b = 0; b < gram_blocks(n2); ++b)
      gram_features(net, w, f2, b * kGramBlock, b * kGramBlock + block_rows(n2, b), s);
  const Index ldo = sym ? n1 : n2;
  const Index nb1 = gram_blocks(n1), nb2 = sym ? nb1 : gram_blocks(n2);
  for (Index bi = 0; bi < nb1; ++bi)
    for (Index bj = 0; bj < (sym ? bi + 1 : nb2); ++bj)
      gram_block(net, f1, f2, bi, bj, out, ldo, s, sym && bi == bj);
  if (sym)
    for (Index bi = 0; bi < nb1; ++bi)
      for (Index bj = 0; bj <= bi; ++bj) gram_mirror(n1, bi, bj, out);
}

namespace {

/// Z = x W^T (n x m) into h; then h = kappa sqrt(eta_u) act(Z) and s = act'(Z).
void output_features(const Network& net, const double* w, const double* x, Index n,
                     double* h, double* s, Gemm& gemm) {
  const Index m = net.width, d = net.dim;
  gemm.run<Eigen::RowMajor, Eigen::ColMajor>(n, m, d, x, d, w, d, h, m, 1.0, false);
  const double cu = net.kappa * std::sqrt(net.eta_u);
  for (Index q = 0; q < n * m; ++q) {
    const double z = h[q];
    double a = z, da = 1.0;
    switch (net.act) {
      case Activation::relu:
        a = z > 0 ? z : 0.0;
        da = z > 0 ? 1.0 : 0.0;
        break;
      case Activation::tanh:
        a = std::tanh(z);
        da = 1.0 - a * a;
        break;
      case Activation::erf:
        a = std::erf(z);
        da = kTwoOverSqrtPi * std::exp(-z * z);
        break;
      case Activation::linear:
        break;
    }
    h[q] = cu * a;
    s[q] = da;
  }
}

/// g = kappa sqrt(eta_w) s diag(U_a): the second-layer-weighted slopes of output a.
void output_slopes(const Network& net, const double* s, Index n, const double* u, Index a,
                   double* g) {
  const Index m = net.width, c = net.outputs;
  const double cw = net.kappa * std::sqrt(net.eta_w);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) g[j * m + i] = s[j * m + i] * (cw * u[i * c + a]);
}

}  // namespace

void OutputGramScratch::reserve(const Network& net, Index n1, Index n2) {
  const Index m = net.width, d = net.dim;
  // Only grows: one scratch serves Grams of several shapes (training, probe, test x train).
  auto grow = [](AlignedBuffer* b, Index size) {
    if (static_cast<Index>(b->size()) < size) b->resize(static_cast<std::size_t>(size));
  };
  for (AlignedBuffer* b : {&h1, &s1, &ga}) grow(b, n1 * m);
  for (AlignedBuffer* b : {&h2, &s2, &gb}) grow(b, n2 * m);
  for (AlignedBuffer* b : {&xx, &hh, &tile}) grow(b, n1 * n2);
  gemm.reserve(n1, m, d);
  gemm.reserve(n2, m, d);
  gemm.reserve(n1, n2, d);
  gemm.reserve(n1, n2, m);
}

double OutputGramScratch::bytes(const Network& net, Index n1, Index n2) {
  OutputGramScratch s;
  s.gemm = Gemm::meter();
  const Index m = net.width, d = net.dim;
  s.gemm.reserve(n1, m, d);
  s.gemm.reserve(n2, m, d);
  s.gemm.reserve(n1, n2, d);
  s.gemm.reserve(n1, n2, m);
  const double n1d = static_cast<double>(n1), n2d = static_cast<double>(n2);
  return 8.0 * (3.0 * (n1d + n2d) * static_cast<double>(m) + 3.0 * n1d * n2d +
                static_cast<double>(s.gemm.reserved_doubles()));
}

void gram_outputs(const Network& net, const double* u, const double* w, const double* x1,
                  Index n1, const double* x2, Index n2, OutputGramScratch& s, double* out) {
  const Index m = net.width, d = net.dim, c = net.outputs;
  const bool sym = x2 == nullptr;
  if (sym) n2 = n1;
  output_features(net, w, x1, n1, s.h1.data(), s.s1.data(), s.gemm);
  const double* h2 = s.h1.data();
  const double* s2 = s.s1.data();
  if (!sym) {
    output_features(net, w, x2, n2, s.h2.data(), s.s2.data(), s.gemm);
    h2 = s.h2.data();
    s2 = s.s2.data();
  }
  const double* xb = sym ? x1 : x2;
  s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(n1, n2, d, x1, d, xb, d, s.xx.data(), n2, 1.0,
                                               false);
  s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(n1, n2, m, s.h1.data(), m, h2, m, s.hh.data(),
                                               n2, 1.0, false);
  const Index ldo = n2 * c;
  for (Index a = 0; a < c; ++a) {
    output_slopes(net, s.s1.data(), n1, u, a, s.ga.data());
    for (Index b = sym ? a : 0; b < c; ++b) {
      output_slopes(net, s2, n2, u, b, s.gb.data());
      s.gemm.run<Eigen::RowMajor, Eigen::ColMajor>(n1, n2, m, s.ga.data(), m, s.gb.data(), m,
                                                   s.tile.data(), n2, 1.0, false);
      for (Index j = 0; j < n1; ++j) {
        // A diagonal block of a symmetric Gram: its lower triangle, mirrored below.
        const Index kend = sym && a == b ? j + 1 : n2;
        for (Index k = 0; k < kend; ++k) {
          double v = s.tile[j * n2 + k] * s.xx[j * n2 + k];
          if (a == b) v += s.hh[j * n2 + k];
          out[(j * c + a) * ldo + k * c + b] = v;
          if (sym) out[(k * c + b) * ldo + j * c + a] = v;
        }
      }
    }
  }
}

namespace {

/// Row of the t-th block of a lower triangle enumerated row by row: (0,0), (1,0), (1,1), ...
Index lower_block_row(Index t) {
  Index bi = static_cast<Index>((std::sqrt(8.0 * static_cast<double>(t) + 1.0) - 1.0) / 2.0);
  while (bi * (bi + 1) / 2 > t) --bi;
  while ((bi + 1) * (bi + 2) / 2 <= t) ++bi;
  return bi;
}

/// One network's Gram with all threads of the enclosing team working on its blocks (the
/// same blocks, in any order, as gram_serial: same bits). Called inside a parallel region.
void gram_team(const Network& net, const double* u, const double* w, const GramFeatures& f1,
               const GramFeatures& f2, bool sym, double* out, GramScratch& s,
               GramScratch& shared_prep, bool ready, std::exception_ptr& error,
               CancelToken* cancel) {
  const Index nb1 = gram_blocks(f1.n), nb2 = sym ? nb1 : gram_blocks(f2.n);
  const Index ldo = sym ? f1.n : f2.n;
  // A thread whose scratch could not be sized still meets every barrier but does no work
  // (the error is rethrown after the region).
  auto guard = [&](auto&& work) {
    if (!ready || cancel_requested(cancel)) return;
    try {
      work();
    } catch (...) {
#pragma omp critical(ntkflow_gram_error)
      if (!error) error = std::current_exception();
    }
  };
  // The per-network preparation is tiny (O(m), or O(m d^2) for linear): one thread does it
  // and the others read it from shared_prep after the barrier.
#pragma omp single
  {
    try {
      gram_prepare(net, u, w, shared_prep);
    } catch (...) {
#pragma omp critical(ntkflow_gram_error)
      if (!error) error = std::current_exception();
    }
  }
  guard([&] {  // same sizes as reserved: copies, no allocation
    s.cwu = shared_prep.cwu;
    s.lin_a = shared_prep.lin_a;
  });
  const bool second = !sym && net.act != Activation::linear;
  const Index n_feat = nb1 + (second ? nb2 : 0);
#pragma omp for schedule(dynamic, 1)
  for (Index t = 0; t < n_feat; ++t) {
    guard([&] {
      const GramFeatures& f = t < nb1 ? f1 : f2;
      const Index b = t < nb1 ? t : t - nb1;
      gram_features(net, w, f, b * kGramBlock, b * kGramBlock + block_rows(f.n, b), s);
    });
  }
  // All blocks but the last row and column have the same size: no ordering needed.
  const Index n_pairs = sym ? nb1 * (nb1 + 1) / 2 : nb1 * nb2;
#pragma omp for schedule(dynamic, 1)
  for (Index t = 0; t < n_pairs; ++t) {
    guard([&] {
      Index bi, bj;
      if (sym) {
        bi = lower_block_row(t);
        bj = t - bi * (bi + 1) / 2;
      } else {
        bi = t / nb2;
        bj = t % nb2;
      }
      gram_block(net, f1, f2, bi, bj, out, ldo, s, sym && bi == bj);
    });
  }
  if (sym) {
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < n_pairs; ++t) {
      guard([&] {
        const Index bi = lower_block_row(t);
        gram_mirror(f1.n, bi, t - bi * (bi + 1) / 2, out);
      });
    }
  }
}

/// Runs f on an OpenMP thread, keeping the first exception of any thread in `error` (to be
/// rethrown after the parallel region). True when f returned normally.
template <class F>
bool keep_first_error(std::exception_ptr& error, F&& f) {
  try {
    f();
    return true;
  } catch (...) {
#pragma omp critical(ntkflow_gram_error)
    if (!error) error = std::current_exception();
    return false;
  }
}

/// ntk_gram for c >= 2 outputs: whole matrices per thread (the output blocks of one matrix
/// are not split across threads).
void ntk_gram_outputs(const Network& net, const double* u, const double* w, Index batch,
                      const double* x1, Index n1, const double* x2, Index n2, double* out,
                      int threads, CancelToken* cancel) {
  const Index m = net.width, d = net.dim, c = net.outputs;
  const Index rows = n1 * c, cols = (x2 ? n2 : n1) * c;
  [[maybe_unused]] const int nt = std::max(1, team_threads(threads));  // unused when serial
  std::exception_ptr error;
#pragma omp parallel num_threads(nt)
  {
    OutputGramScratch s;
    const bool ready = keep_first_error(error, [&] { s.reserve(net, n1, x2 ? n2 : n1); });
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < batch; ++b) {
      if (!ready || cancel_requested(cancel)) continue;
      keep_first_error(error, [&] {
        gram_outputs(net, u + b * m * c, w + b * m * d, x1, n1, x2, n2, s,
                     out + b * rows * cols);
      });
    }
  }
  if (error) std::rethrow_exception(error);
  if (cancel && cancel->stop.load()) throw Cancelled();
}

}  // namespace
}  // namespace detail

void ntk_gram(const Network& net, const double* u, const double* w, Index batch,
              const double* x1, Index n1, const double* x2, Index n2, double* out,
              int threads, CancelToken* cancel) {
  using namespace detail;
  if (net.width < 1 || net.dim < 1 || batch < 0 || n1 < 1 || (x2 != nullptr && n2 < 1))
    throw std::invalid_argument("ntk_gram: width, dim, n1 (and n2) must be >= 1");
  if (batch == 0) return;
  const bool sym = x2 == nullptr;
  const Index m = net.width, d = net.dim;
  if (net.outputs > 1) {
    ntk_gram_outputs(net, u, w, batch, x1, n1, x2, n2, out, threads, cancel);
    return;
  }
  const Index cols = sym ? n1 : n2;
  const Index feat = gram_feature_size(net, n1) + (sym ? 0 : gram_feature_size(net, n2));
  const int nt = std::max(1, team_threads(threads));
  std::exception_ptr error;
  if (batch >= nt || nt == 1) {
    // Whole matrices per thread: no synchronisation at all.
#pragma omp parallel num_threads(nt)
    {
      AlignedBuffer hs, gs;
      GramScratch s;
      const bool ready = keep_first_error(error, [&] {
        hs.resize(static_cast<std::size_t>(feat));
        gs.resize(net.act == Activation::linear ? 0 : static_cast<std::size_t>(feat));
        s.reserve(net, n1, sym ? n1 : n2);
      });
#pragma omp for schedule(dynamic, 1)
      for (Index b = 0; b < batch; ++b) {
        if (!ready || cancel_requested(cancel)) continue;
        keep_first_error(error, [&] {
          gram_serial(net, u + b * m, w + b * m * d, x1, n1, x2, n2, hs.data(), gs.data(), s,
                      out + b * n1 * cols);
        });
      }
    }
  } else {
    // Fewer matrices than threads: every thread works on the blocks of each matrix.
    AlignedBuffer hs(static_cast<std::size_t>(feat));
    AlignedBuffer gs(net.act == Activation::linear ? 0 : static_cast<std::size_t>(feat));
    GramScratch prep;
    prep.reserve(net, n1, sym ? n1 : n2);
    const GramFeatures f1{x1, n1, hs.data(), gs.data()};
    const Index off = gram_feature_size(net, n1);
    const GramFeatures f2 = sym ? f1 : GramFeatures{x2, n2, hs.data() + off, gs.data() + off};
#pragma omp parallel num_threads(nt)
    {
      GramScratch s;
      const bool ready = keep_first_error(error, [&] { s.reserve(net, n1, sym ? n1 : n2); });
      for (Index b = 0; b < batch; ++b)
        gram_team(net, u + b * m, w + b * m * d, f1, f2, sym, out + b * n1 * cols, s, prep,
                  ready, error, cancel);
    }
  }
  if (error) std::rethrow_exception(error);
  if (cancel && cancel->stop.load()) throw Cancelled();
}

double gram_workspace_bytes(const Network& net, Index batch, Index n1, Index n2, int threads) {
  const int nt = std::max(1, detail::team_threads(threads));
  if (net.outputs > 1)
    return nt * detail::OutputGramScratch::bytes(net, n1, n2 > 0 ? n2 : n1);
  const double feat = static_cast<double>(detail::gram_feature_size(net, n1) +
                                          detail::gram_feature_size(net, n2));
  const double copies = batch >= nt ? static_cast<double>(nt) : 1.0;
  detail::GramScratch metered;
  metered.gemm = detail::Gemm::meter();
  metered.reserve_gemm(net, n1, n2 > 0 ? n2 : n1);  // n2 = 0: the symmetric Gram
  const double per_thread = detail::GramScratch::buffer_bytes(net) +
                            8.0 * static_cast<double>(metered.gemm.reserved_doubles());
  return 8.0 * 2.0 * copies * feat + nt * per_thread;
}

}  // namespace ntkflow
