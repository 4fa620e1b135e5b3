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
  /// Makes run() with these sizes allocation-free (it may allocate here, never later for
  /// the same sizes). rows x depth times depth x cols.
  void reserve(Index rows, Index cols, Index depth) {
    grow(sizes(rows, cols, depth));
  }

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

 private:
  struct Sizes {
    Index kc, mc, nc, a, b;
  };

  void grow(const Sizes& s) {
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
};

}  // namespace ntkflow::detail
