// The gradient of a one-output relu network on its batch as two AVX-512 kernels (private
// header), for a small input dimension (d <= kReluKernelMaxDim):
//   forward:  H = max(X W^T, 0) and F = kappa H u, relu and the output sum applied to each
//             tile of the product while it is still in registers;
//   backward: G = (diag(r) X)^T [H > 0] and dU = H^T r. relu' is a mask, so u leaves the
//             sum (dW = diag(u) G^T up to a factor) and B = diag(r) [H > 0] diag(u) is
//             never formed: each mask is a predicate on a vector addition.
//
// Through Eigen the same gradient costs, besides its two products, a zero-fill of the
// forward product (Eigen's kernel only accumulates), packing of both products' operands,
// and two sweeps over the rows x m matrix for relu, F, dU and B. On W3 (n = m = 256,
// d = 32) those took about two fifths of a descent step. With d small, a tile's slice of
// W^T stays in L1 and neither product needs blocking over d, so plain register tiles run
// at the FMA ports' rate.
//
// Layout: units come in panels of kPanel = 24 (one register tile's width; the last panel
// padded with zero weights, hence zero activations). W^T and H are stored panel by panel,
// each panel contiguous (d x 24 and rows x 24), so that a kernel reads its operands as
// streams; row-major H would put consecutive rows a multiple of 2 KiB apart at m = 256,
// on a few L1 sets that cannot hold them.
//
// Bits: each entry of Z and G sums over k, resp. j, in order; each F_j sums its units in
// eight interleaved chains (unit i in chain i mod 8, in panel order) added in a fixed order
// at the end. None of it depends on threads or on other trajectories.
#pragma once

#include <algorithm>

#include "ntkflow/core.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#define NTKFLOW_RELU_KERNELS 1
#endif

namespace ntkflow::detail {

/// Largest input dimension the kernels take: a tile's d x 24 slice of W^T (24 KiB at 128)
/// stays in L1 across the rows. Larger d goes through Gemm, which blocks over d.
constexpr Index kReluKernelMaxDim = 128;

/// Units per panel: one register tile's width (three 8-double vectors).
constexpr Index kPanel = 24;

/// Units rounded up to whole panels.
inline Index relu_padded_width(Index m) { return (m + kPanel - 1) / kPanel * kPanel; }

/// W (m x d, row-major) as W^T in panels: panel p holds units 24p .. 24p + 23 as a
/// contiguous d x 24 block, zero beyond unit m - 1. out holds d * relu_padded_width(m).
inline void pack_relu_weights(const double* w, Index m, Index d, double* out) {
  for (Index p = 0; p < m; p += kPanel) {
    double* panel = out + p * d;
    for (Index k = 0; k < d; ++k)
      for (Index c = 0; c < kPanel; ++c)
        panel[k * kPanel + c] = p + c < m ? w[(p + c) * d + k] : 0.0;
  }
}

#ifdef NTKFLOW_RELU_KERNELS

namespace relu_kernels {

constexpr int kRows = 8;  // rows of X per forward tile
constexpr int kVecs = 3;  // vectors per panel

/// Forward tile: rows j0 .. j0 + R - 1 of one panel. H into the panel's rows; f8[r] +=
/// h_row . u lane by lane (u: the panel's 24 entries).
template <int R>
inline void forward_tile(const double* x, Index d, const double* wpanel, const double* u,
                         Index j0, double* hpanel, __m512d* f8) {
  __m512d acc[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_pd();
  const double* xr = x + j0 * d;
  for (Index k = 0; k < d; ++k) {
    const double* wk = wpanel + k * kPanel;
    __m512d b[kVecs];
    for (int v = 0; v < kVecs; ++v) b[v] = _mm512_loadu_pd(wk + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m512d a = _mm512_set1_pd(xr[r * d + k]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_pd(a, b[v], acc[r][v]);
    }
  }
  const __m512d zero = _mm512_setzero_pd();
  __m512d uv[kVecs];
  for (int v = 0; v < kVecs; ++v) uv[v] = _mm512_loadu_pd(u + 8 * v);
  for (int r = 0; r < R; ++r) {
    double* hr = hpanel + (j0 + r) * kPanel;
    __m512d f = f8[r];
    for (int v = 0; v < kVecs; ++v) {
      // max returns its second operand when either is NaN or both are zeros: 0 for z NaN
      // or -0, as z > 0 ? z : 0 does on the general path.
      const __m512d hv = _mm512_max_pd(acc[r][v], zero);
      _mm512_storeu_pd(hr + 8 * v, hv);
      f = _mm512_fmadd_pd(hv, uv[v], f);
    }
    f8[r] = f;
  }
}

/// Forward, rows j0 .. j0 + R - 1: every panel, then F for these rows.
template <int R>
inline void forward_rows(const double* x, Index rows, Index d, const double* wt, Index m,
                         const double* u, double kappa, Index j0, double* h, double* f) {
  __m512d f8[R];
  for (int r = 0; r < R; ++r) f8[r] = _mm512_setzero_pd();
  for (Index p = 0; p < m; p += kPanel) {
    const Index left = m - p;
    if (left >= kPanel) {
      forward_tile<R>(x, d, wt + p * d, u + p, j0, h + p * rows, f8);
    } else {  // the last, padded panel: u padded with zeros too
      alignas(64) double up[kPanel] = {};
      std::copy(u + p, u + m, up);
      forward_tile<R>(x, d, wt + p * d, up, j0, h + p * rows, f8);
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(64) double s[8];
    _mm512_store_pd(s, f8[r]);
    f[j0 + r] = kappa * (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
  }
}

/// Backward tile: one panel, inputs k0 .. k0 + K - 1: g[k][unit] = sum_j xr[j][k]
/// [h_j,unit > 0] into the panel's columns of g (row stride gs); with kDu, also du8 =
/// sum_j r_j h_j over the panel.
template <int K, bool kDu>
inline void backward_tile(const double* hpanel, Index rows, const double* xr, Index d,
                          const double* r, Index k0, double* g, Index gs, __m512d* du8) {
  __m512d acc[K][kVecs], dacc[kVecs];
  for (int k = 0; k < K; ++k)
    for (int v = 0; v < kVecs; ++v) acc[k][v] = _mm512_setzero_pd();
  for (int v = 0; v < kVecs; ++v) dacc[v] = _mm512_setzero_pd();
  const __m512d zero = _mm512_setzero_pd();
  for (Index j = 0; j < rows; ++j) {
    const double* hj = hpanel + j * kPanel;
    __mmask8 on[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      const __m512d hv = _mm512_loadu_pd(hj + 8 * v);
      on[v] = _mm512_cmp_pd_mask(hv, zero, _CMP_GT_OQ);
      if constexpr (kDu) dacc[v] = _mm512_fmadd_pd(_mm512_set1_pd(r[j]), hv, dacc[v]);
    }
    const double* xj = xr + j * d + k0;
    for (int k = 0; k < K; ++k) {
      const __m512d a = _mm512_set1_pd(xj[k]);
      for (int v = 0; v < kVecs; ++v)
        acc[k][v] = _mm512_mask_add_pd(acc[k][v], on[v], acc[k][v], a);
    }
  }
  for (int k = 0; k < K; ++k)
    for (int v = 0; v < kVecs; ++v) _mm512_storeu_pd(g + (k0 + k) * gs + 8 * v, acc[k][v]);
  if constexpr (kDu)
    for (int v = 0; v < kVecs; ++v) du8[v] = dacc[v];
}

template <bool kDu>
inline void backward_block(Index kb, const double* hpanel, Index rows, const double* xr,
                           Index d, const double* r, Index k0, double* g, Index gs,
                           __m512d* du8) {
  switch (kb) {
    case 8: backward_tile<8, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 7: backward_tile<7, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 6: backward_tile<6, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 5: backward_tile<5, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 4: backward_tile<4, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 3: backward_tile<3, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    case 2: backward_tile<2, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
    default: backward_tile<1, kDu>(hpanel, rows, xr, d, r, k0, g, gs, du8); break;
  }
}

}  // namespace relu_kernels

/// H = max(X W^T, 0) into h (panels: rows x 24 each, rows * relu_padded_width(m) doubles)
/// and F = kappa H u into f (rows), from X (rows x d, row-major), W^T packed by
/// pack_relu_weights, and u (m).
inline void relu_forward(const double* x, Index rows, Index d, const double* wt, Index m,
                         const double* u, double kappa, double* h, double* f) {
  using namespace relu_kernels;
  Index j0 = 0;
  for (; j0 + kRows <= rows; j0 += kRows) forward_rows<kRows>(x, rows, d, wt, m, u, kappa, j0, h, f);
  switch (rows - j0) {
    case 7: forward_rows<7>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 6: forward_rows<6>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 5: forward_rows<5>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 4: forward_rows<4>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 3: forward_rows<3>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 2: forward_rows<2>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    case 1: forward_rows<1>(x, rows, d, wt, m, u, kappa, j0, h, f); break;
    default: break;
  }
}

/// From relu_forward's h: G = Xr^T [H > 0] into g (d x relu_padded_width(m), row-major)
/// given Xr = diag(r) X (rows x d, row-major), unless g is null; dU = H^T r into du (m),
/// unless du is null. Each entry sums the rows j = 0, 1, ... in order.
inline void relu_backward(const double* h, Index rows, Index m, const double* xr, Index d,
                          const double* r, double* g, double* du) {
  using namespace relu_kernels;
  const Index gs = relu_padded_width(m);
  for (Index p = 0; p < m; p += kPanel) {
    const double* hpanel = h + p * rows;
    __m512d du8[kVecs];
    Index k0 = 0;
    if (du != nullptr) {  // the first block of inputs also sums dU (or, without g, only it)
      const Index kb = g != nullptr ? std::min<Index>(d, 8) : 1;
      double* gt = g != nullptr ? g + p : nullptr;
      alignas(64) double scratch[8 * kPanel];  // G's block when g is null
      backward_block<true>(kb, hpanel, rows, xr, d, r, 0, gt ? gt : scratch, gt ? gs : kPanel,
                           du8);
      alignas(64) double s[kPanel];
      for (int v = 0; v < kVecs; ++v) _mm512_store_pd(s + 8 * v, du8[v]);
      std::copy(s, s + std::min<Index>(m - p, kPanel), du + p);
      k0 = kb;
    }
    if (g == nullptr) continue;
    for (; k0 < d; k0 += 8)
      backward_block<false>(std::min<Index>(d - k0, 8), hpanel, rows, xr, d, r, k0, g + p, gs,
                            du8);
  }
}

#endif  // NTKFLOW_RELU_KERNELS

}  // namespace ntkflow::detail
