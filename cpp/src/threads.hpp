// OpenMP's run-time calls, or their one-thread answers in a build without OpenMP (private
// header). Only this header includes <omp.h>. The `#pragma omp` lines elsewhere need no
// guard: a compiler without OpenMP skips them and the same loops run on one thread, with
// the same bits (an item only ever writes its own rows, whatever the team).
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ntkflow::detail {

/// True when the core was compiled with OpenMP.
#ifdef _OPENMP
inline constexpr bool kOpenMP = true;
#else
inline constexpr bool kOpenMP = false;
#endif

/// The default team: OMP_NUM_THREADS or all cores; 1 without OpenMP.
inline int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// The team a call asking for `requested` threads gets (0: the default); 1 without OpenMP,
/// so that buffers are sized for the threads that really run.
inline int team_threads(int requested) {
  return kOpenMP && requested > 0 ? requested : default_threads();
}

/// This thread's number in its team, and the team's size (0 and 1 outside a parallel
/// region, and always without OpenMP).
inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

}  // namespace ntkflow::detail
