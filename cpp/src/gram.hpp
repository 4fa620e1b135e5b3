// NTK Gram matrices, block by block (private header, shared by ntk_gram and the records of
// simulate_network so that both give the same bits).
//
// K(X1, X2) = kappa^2 [eta_u H1 H2^T + eta_w (G1 G2^T) o (X1 X2^T)] (docs/theory.md §C.1) with
// H = act(X W^T), G = act'(X W^T) diag(u). The scalars are folded into the features,
// Hs = kappa sqrt(eta_u) H and Gs = kappa sqrt(eta_w) G, and K is computed in square blocks
// of kGramBlock rows: K_IJ = Hs_I Hs_J^T + (Gs_I Gs_J^T) o (X_I X_J^T). The Hadamard factor
// is applied to a tile that is still in cache, so the n x n matrix G G^T never exists, and
// no per-parameter Jacobian is ever formed. For a symmetric Gram only blocks J <= I are
// computed (the diagonal blocks on their lower triangle, by Eigen's triangular kernel) and
// mirrored. The block split is fixed (it does not depend on the thread count),
// and so are the bits.
//
// Linear activation: H H^T = X W^T W X^T and G G^T = ||u||^2 1 1^T, so
// K = X A X2^T with A = kappa^2 (eta_u W^T W + eta_w ||u||^2 I): O(n^2 d), not O(n^2 m).
#pragma once

#include <Eigen/Core>
#include <vector>

#include "gemm.hpp"
#include "ntkflow/nonlinear.hpp"

namespace ntkflow::detail {

constexpr Index kGramBlock = 256;

using AlignedBuffer = std::vector<double, Eigen::aligned_allocator<double>>;

/// Number of row blocks of n inputs.
inline Index gram_blocks(Index n) { return (n + kGramBlock - 1) / kGramBlock; }

/// Scratch of one thread computing Gram blocks: GEMM packing space and two tiles.
struct GramScratch {
  Gemm gemm;
  AlignedBuffer tile_g, tile_c;  ///< kGramBlock^2 each
  AlignedBuffer cwu;             ///< (width) kappa sqrt(eta_w) u
  AlignedBuffer lin_a;           ///< (dim, dim) linear activation: A

  /// Sizes everything for Grams of `net` between n1 and n2 inputs (may allocate; nothing
  /// later does for the same sizes).
  void reserve(const Network& net, Index n1, Index n2);

  /// The GEMM part of reserve(); with gemm = Gemm::meter() it only measures.
  void reserve_gemm(const Network& net, Index n1, Index n2);

  /// Bytes of the tiles and buffers reserve() sizes besides the GEMM packing space.
  static double buffer_bytes(const Network& net) {
    return 8.0 * static_cast<double>(2 * kGramBlock * kGramBlock + net.width +
                                     net.dim * net.dim);
  }
};

/// Features of one input set x (n, dim) for one network, in caller-owned buffers:
/// nonlinear: hs, gs (n, width); linear: hs (n, dim) = x A (gs unused).
struct GramFeatures {
  const double* x = nullptr;
  Index n = 0;
  double* hs = nullptr;
  double* gs = nullptr;
};

/// Per-network preparation (cwu, or A for the linear activation). Call before features.
void gram_prepare(const Network& net, const double* u, const double* w, GramScratch& s);

/// Rows [r0, r1) of the features of f (after gram_prepare with the same network).
void gram_features(const Network& net, const double* w, const GramFeatures& f, Index r0,
                   Index r1, GramScratch& s);

/// Block (bi, bj) of K(f1, f2) written into out (leading dimension ldo). For the linear
/// activation f2.hs is ignored and f2.x used (K = (x1 A) x2^T). `lower`: a diagonal block of
/// a symmetric Gram, of which only the lower triangle is computed (gram_mirror fills the
/// rest).
void gram_block(const Network& net, const GramFeatures& f1, const GramFeatures& f2, Index bi,
                Index bj, double* out, Index ldo, GramScratch& s, bool lower = false);

/// Copies the strictly lower part of block (bi, bj), bi >= bj, of a symmetric Gram to the
/// upper triangle.
void gram_mirror(Index n, Index bi, Index bj, double* out);

/// The whole Gram on one thread. x2 null: K(x1, x1), symmetric. Feature buffers: hs, gs
/// of (n1 + n2) x width doubles (x2 null: n1 x width).
void gram_serial(const Network& net, const double* u, const double* w, const double* x1,
                 Index n1, const double* x2, Index n2, double* hs, double* gs, GramScratch& s,
                 double* out);

/// Scratch of the Gram of a network with c >= 2 outputs (gram_outputs): features and
/// n1 x n2 tiles, sized once by reserve().
struct OutputGramScratch {
  Gemm gemm;
  AlignedBuffer h1, s1, h2, s2, ga, gb;  ///< (n, width) features
  AlignedBuffer xx, hh, tile;            ///< (n1, n2)
  void reserve(const Network& net, Index n1, Index n2);
  /// Bytes reserve() allocates, GEMM packing included.
  static double bytes(const Network& net, Index n1, Index n2);
};

/// The (n1 c, n2 c) Gram of a network with c outputs (docs/theory.md §I.2), U (width, c):
/// K[(j,a),(k,b)] = kappa^2 [eta_u delta_ab h_j . h_k + eta_w (x_j . x_k) sum_i s_ji s_ki
/// U_ia U_ib]. Output block (a, b) is (Gw_a Gw_b^T) o (X1 X2^T), plus H1 H2^T when a = b,
/// with Gw_a = kappa sqrt(eta_w) act'(Z) diag(U_a). x2 null: K(x1, x1), exactly symmetric
/// (blocks b > a are mirrored from a < b, diagonal blocks from their lower triangle).
void gram_outputs(const Network& net, const double* u, const double* w, const double* x1,
                  Index n1, const double* x2, Index n2, OutputGramScratch& s, double* out);

/// Doubles of feature scratch gram_serial needs.
inline Index gram_feature_size(const Network& net, Index n) {
  return net.act == Activation::linear ? n * net.dim : n * net.width;
}

}  // namespace ntkflow::detail
