// Matrix products through Eigen's GEMM kernel with packing buffers owned by the caller
// (private header).
//
// An Eigen product expression `C.noalias() = A * B` packs its operands into buffers it
// allocates on every call once they exceed EIGEN_STACK_ALLOCATION_LIMIT (128 KiB): a heap
// allocation per gradient evaluation in the time loop. `Gemm` calls the same kernel
// (Eigen::internal::general_matrix_matrix_product, the code behind those expressions) with
// buffers it reserves up front, so a time loop allocates nothing. Eigen is pinned to 3.4 at
// build time; this is the one place that touches its internals.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "ntkflow/core.hpp"

namespace ntkflow::detail {

class Gemm {
 public:
  /// A Gemm that only measures: reserve() records the packing space it would allocate,
  /// for memory estimates made before anything is allocated. Never run() one.
  static Gemm meter() {
    Gemm g;
    g.meter_ = true;
    return g;
  }

  /// Packing space, in doubles, for every size reserved so far.
  Index reserved_doubles() const { return need_a_ + need_b_; }

  /// Makes run() with these sizes allocation-free (it may allocate here, never later for
  /// the same sizes). rows x depth times depth x cols.
  void reserve(Index rows, Index cols, Index depth) {
    grow(sizes(rows, cols, depth));
  }

  /// The same for run_lower() of a size x size result.
  void reserve_lower(Index size, Index depth) { grow(lower_sizes(size, depth)); }

  /// C = alpha * A * B, or C += alpha * A * B when `accumulate`. C is row-major
  /// (rows x cols, leading dimension ldc); A (rows x depth) and B (depth x cols) are read
  /// in the storage order given by the template arguments (Eigen::RowMajor / ColMajor)
  /// with leading dimensions lda, ldb. A transposed row-major matrix is a ColMajor one.
  template <int AOrder, int BOrder>
  void run(Index rows, Index cols, Index depth, const double* a, Index lda, const double* b,
           Index ldb, double* c, Index ldc, double alpha, bool accumulate) {
    if (rows <= 0 || cols <= 0) return;
    if (!accumulate) {
      for (Index i = 0; i < rows; ++i) std::fill(c + i * ldc, c + i * ldc + cols, 0.0);
    }
    if (depth <= 0) return;
    const Sizes s = sizes(rows, cols, depth);
    grow(s);  // a no-op once these sizes were reserved
    Blocking blocking(s.mc, s.nc, s.kc, a_.data(), b_.data());
    Eigen::internal::general_matrix_matrix_product<
        Eigen::Index, double, AOrder, false, double, BOrder, false, Eigen::RowMajor,
        1>::run(rows, cols, depth, a, lda, b, ldb, c, 1, ldc, alpha, blocking, nullptr);
  }

  /// The lower triangle (diagonal included) of C = alpha * A * B for a square C
  /// (size x size, row-major, leading dimension ldc): Eigen's triangular kernel (the one
  /// behind selfadjointView().rankUpdate()), about half the work of run(). Entries above the
  /// diagonal are left untouched; `accumulate` as in run().
  template <int AOrder, int BOrder>
  void run_lower(Index size, Index depth, const double* a, Index lda, const double* b,
                 Index ldb, double* c, Index ldc, double alpha, bool accumulate) {
    if (size <= 0) return;
    if (!accumulate) {
      for (Index i = 0; i < size; ++i) std::fill(c + i * ldc, c + i * ldc + i + 1, 0.0);
    }
    if (depth <= 0) return;
    const Sizes s = lower_sizes(size, depth);
    grow(s);
    Blocking blocking(s.mc, s.nc, s.kc, a_.data(), b_.data());
    Eigen::internal::general_matrix_matrix_triangular_product<
        Eigen::Index, double, AOrder, false, double, BOrder, false, Eigen::RowMajor, 1,
        Eigen::Lower>::run(size, depth, a, lda, b, ldb, c, 1, ldc, alpha, blocking);
  }

 private:
  struct Sizes {
    Index kc, mc, nc, a, b;
  };

  void grow(const Sizes& s) {
    need_a_ = std::max(need_a_, s.a);
    need_b_ = std::max(need_b_, s.b);
    if (meter_) return;
    if (s.a > static_cast<Index>(a_.size())) a_.resize(static_cast<std::size_t>(s.a));
    if (s.b > static_cast<Index>(b_.size())) b_.resize(static_cast<std::size_t>(s.b));
  }

  // Eigen computes a row-major product as the transposed column-major one, whose "rows"
  // are our columns: the blocking is that of gemm_blocking_space<RowMajor, ...>.
  static Sizes sizes(Index rows, Index cols, Index depth) {
    Eigen::Index kc = depth, mc = cols, nc = rows;
    Eigen::internal::computeProductBlockingSizes<double, double, 1>(kc, mc, nc,
                                                                     Eigen::Index(1));
    return {kc, mc, nc, kc * mc, kc * nc};
  }

  // As Eigen's general_product_to_triangular_selector: no L3 blocking, the packed right
  // operand spans the whole size.
  static Sizes lower_sizes(Index size, Index depth) {
    Eigen::Index kc = depth, mc = size, nc = size;
    Eigen::internal::computeProductBlockingSizes<double, double, 1>(kc, mc, nc,
                                                                     Eigen::Index(1));
    return {kc, mc, size, kc * mc, kc * size};
  }

  class Blocking : public Eigen::internal::level3_blocking<double, double> {
   public:
    Blocking(Index mc, Index nc, Index kc, double* a, double* b) {
      this->m_mc = mc;
      this->m_nc = nc;
      this->m_kc = kc;
      this->m_blockA = a;
      this->m_blockB = b;
    }
  };

  // Eigen's packed panels are written with aligned stores.
  std::vector<double, Eigen::aligned_allocator<double>> a_, b_;
  Index need_a_ = 0, need_b_ = 0;
  bool meter_ = false;
};

}  // namespace ntkflow::detail
