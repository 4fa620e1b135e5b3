#include <pybind11/stl.h>

#include <optional>

#include "bind_common.hpp"
#include "ntkflow/nonlinear.hpp"

namespace ntkflow::bindings {

namespace {

CArray ntk_gram_py(const Network& net, const CArray& u, const CArray& w, Index batch,
                   const CArray& x1, const std::optional<CArray>& x2, int threads) {
  const Index m = net.width, d = net.dim;
  if (batch < 0) throw py::value_error("batch must be >= 0");
  if (x1.ndim() != 2 || x1.shape(1) != d || x1.shape(0) < 1)
    throw py::value_error("X must have shape (samples, dim)");
  const Index n1 = x1.shape(0);
  Index n2 = n1;
  const double* x2p = nullptr;
  if (x2) {
    if (x2->ndim() != 2 || x2->shape(1) != d || x2->shape(0) < 1)
      throw py::value_error("X2 must have shape (samples2, dim)");
    n2 = x2->shape(0);
    x2p = x2->data();
  }
  const double* up = in_buffer(u, batch * m, "u");
  const double* wp = in_buffer(w, batch * m * d, "W");
  CArray out({batch, n1, n2});
  double* op = out.mutable_data();
  run_cancellable([&](CancelToken* token) {
    ntk_gram(net, up, wp, batch, x1.data(), n1, x2p, n2, op, threads, token);
  });
  return out;
}

}  // namespace

void bind_nonlinear(py::module_& m) {
  // module_local: each instruction-set build is its own module with the same C++ types.
  py::enum_<Activation>(m, "Activation", py::module_local())
      .value("linear", Activation::linear)
      .value("relu", Activation::relu)
      .value("tanh", Activation::tanh)
      .value("erf", Activation::erf);

  py::class_<Network>(m, "Network", py::module_local())
      .def(py::init<>())
      .def_readwrite("width", &Network::width)
      .def_readwrite("dim", &Network::dim)
      .def_readwrite("act", &Network::act)
      .def_readwrite("kappa", &Network::kappa)
      .def_readwrite("eta_u", &Network::eta_u)
      .def_readwrite("eta_w", &Network::eta_w);

  m.def("ntk_gram", &ntk_gram_py, py::arg("net"), py::arg("u").noconvert(),
        py::arg("w").noconvert(), py::arg("batch"), py::arg("x1").noconvert(),
        py::arg("x2").noconvert() = py::none(), py::arg("threads") = 0,
        "NTK Gram matrices (batch, n1, n2) of a batch of networks.");
  m.def("gram_workspace_bytes", &gram_workspace_bytes, py::arg("net"), py::arg("batch"),
        py::arg("n1"), py::arg("n2"), py::arg("threads") = 0);
}

}  // namespace ntkflow::bindings
