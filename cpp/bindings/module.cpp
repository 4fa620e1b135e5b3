// The extension module. One copy is built per instruction-set level; the Python package
// imports the best one the CPU runs (ntkflow/_core.py).
#include "bind_common.hpp"
#include "ntkflow/philox.hpp"

#ifndef NTKFLOW_MODULE_NAME
#define NTKFLOW_MODULE_NAME _core_baseline
#endif

namespace ntkflow::bindings {
void bind_linear(py::module_& m);
void bind_nonlinear(py::module_& m);
}

PYBIND11_MODULE(NTKFLOW_MODULE_NAME, m) {
  namespace py = pybind11;
  m.doc() = "ntkflow compiled core (private: use the ntkflow package)";
  ntkflow::bindings::bind_linear(m);
  ntkflow::bindings::bind_nonlinear(m);
  m.def("build_isa", &ntkflow::build_isa);
  m.def("build_compiler", &ntkflow::build_compiler);
  m.def("eigen_version", &ntkflow::eigen_version);
  m.def("max_threads", &ntkflow::max_threads);
  m.def("openmp", &ntkflow::openmp);
  m.def("cpu_best_isa", &ntkflow::cpu_best_isa);
  // Exposed so tests can check the generator against the Random123 known-answer vectors.
  m.def("philox_block", [](std::uint64_t seed, std::uint64_t stream, std::uint64_t block) {
    const auto c = ntkflow::Philox(seed, stream).block(block);
    return py::make_tuple(c[0], c[1], c[2], c[3]);
  });
}
