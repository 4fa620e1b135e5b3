#include <pybind11/stl.h>

#include <optional>
#include <utility>

#include "bind_common.hpp"
#include "ntkflow/nonlinear.hpp"

namespace ntkflow::bindings {

namespace {

void simulate_network_py(const Network& net, const CArray& x, const CArray& y, InitSpec init,
                         const std::optional<CArray>& u0, const std::optional<CArray>& w0,
                         Schedule sched, const CArray& times, Index trajectories,
                         const py::dict& records, bool params_all,
                         const std::optional<CArray>& probe,
                         const std::optional<CArray>& test_x,
                         const std::optional<CArray>& test_y,
                         const py::object& progress, Index batch, bool replace,
                         double label_noise) {
  const Index n = trajectories, m = net.width, d = net.dim, c = net.outputs, T = times.size();
  if (n < 1 || m < 1 || d < 1 || c < 1)
    throw py::value_error("trajectories, width, dim and outputs must be >= 1");
  if (x.ndim() != 2 || x.shape(1) != d || x.shape(0) < 1)
    throw py::value_error("X must have shape (samples, dim)");
  const Index samples = x.shape(0);
  TrainingData data;
  data.x = x.data();
  data.y = in_buffer(y, samples * c, "y");
  data.samples = samples;
  data.batch = batch;
  data.replace = replace;
  data.label_noise = label_noise;
  set_initial(init, u0, w0, n, m, d);
  sched.times = times.data();
  sched.n_times = T;
  const Records out = common_records(records, n, T, m, d, params_all, c);
  KernelRecords kr;
  Index g = samples;
  if (probe) {
    if (probe->ndim() != 2 || probe->shape(1) != d || probe->shape(0) < 1)
      throw py::value_error("probe must have shape (probes, dim)");
    kr.probe = probe->data();
    kr.n_probe = probe->shape(0);
    g = kr.n_probe;
  }
  kr.gram = out_buffer<double>(records, "gram", {n, T, g * c, g * c});
  if (test_x) {
    if (test_x->ndim() != 2 || test_x->shape(1) != d || test_x->shape(0) < 1)
      throw py::value_error("test_x must have shape (test samples, dim)");
    if (!test_y) throw py::value_error("test_x needs test_y");
    kr.test_x = test_x->data();
    kr.n_test = test_x->shape(0);
    kr.test_y = in_buffer(*test_y, kr.n_test * c, "test_y");
  }
  // The (trajectories, times) kernel and held-out records, each under its Python name.
  using Field = double* KernelRecords::*;
  static const std::pair<Field, const char*> kPerTime[] = {
      {&KernelRecords::ntk_change, "ntk_change"},
      {&KernelRecords::kernel_distance, "kernel_distance"},
      {&KernelRecords::kta, "kta"},
      {&KernelRecords::move_u, "move_u"},
      {&KernelRecords::move_w, "move_w"},
      {&KernelRecords::pattern_change, "pattern_change"},
      {&KernelRecords::loss_lin, "loss_lin"},
      {&KernelRecords::error, "error"},
      {&KernelRecords::test_loss, "test_loss"},
      {&KernelRecords::test_error, "test_error"},
      {&KernelRecords::test_loss_lin, "test_loss_lin"},
      {&KernelRecords::test_error_lin, "test_error_lin"},
      {&KernelRecords::lin_gap, "lin_gap"},
      {&KernelRecords::test_lin_gap, "test_lin_gap"}};
  for (const auto& [field, name] : kPerTime) kr.*field = out_buffer<double>(records, name, {n, T});
  run_cancellable([&](CancelToken* token) {
    simulate_network(net, data, init, sched, n, out, kr, token);
  }, progress);
}

CArray ntk_gram_py(const Network& net, const CArray& u, const CArray& w, Index batch,
                   const CArray& x1, const std::optional<CArray>& x2, int threads) {
  const Index m = net.width, d = net.dim, c = net.outputs;
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
  const double* up = in_buffer(u, batch * m * c, "u");
  const double* wp = in_buffer(w, batch * m * d, "W");
  CArray out({batch, n1 * c, n2 * c});
  double* op = out.mutable_data();
  run_cancellable([&](CancelToken* token) {
    ntk_gram(net, up, wp, batch, x1.data(), n1, x2p, n2, op, threads, token);
  });
  return out;
}

py::array_t<Index> sgd_batch_py(std::uint64_t seed, Index trajectory, std::int64_t step,
                                Index samples, Index batch, bool replace) {
  if (batch < 1) throw py::value_error("batch_size must be >= 1");
  py::array_t<Index> out(batch);
  sgd_batch(seed, trajectory, step, samples, batch, replace, out.mutable_data());
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

  py::enum_<Loss>(m, "Loss", py::module_local())
      .value("square", Loss::square)
      .value("logistic", Loss::logistic)
      .value("softmax", Loss::softmax);

  py::class_<Network>(m, "Network", py::module_local())
      .def(py::init<>())
      .def_readwrite("width", &Network::width)
      .def_readwrite("dim", &Network::dim)
      .def_readwrite("act", &Network::act)
      .def_readwrite("kappa", &Network::kappa)
      .def_readwrite("eta_u", &Network::eta_u)
      .def_readwrite("eta_w", &Network::eta_w)
      .def_readwrite("outputs", &Network::outputs)
      .def_readwrite("loss", &Network::loss)
      .def_readwrite("lambda_u", &Network::lambda_u)
      .def_readwrite("lambda_w", &Network::lambda_w);

  m.def("simulate_network", &simulate_network_py, py::arg("net"), py::arg("x").noconvert(),
        py::arg("y").noconvert(), py::arg("init"), py::arg("u0").noconvert() = py::none(),
        py::arg("w0").noconvert() = py::none(), py::arg("schedule"),
        py::arg("times").noconvert(), py::arg("trajectories"), py::arg("records"),
        py::arg("params_all") = false, py::arg("probe").noconvert() = py::none(),
        py::arg("test_x").noconvert() = py::none(), py::arg("test_y").noconvert() = py::none(),
        py::arg("progress") = py::none(), py::arg("batch") = 0, py::arg("replace") = false,
        py::arg("label_noise") = 0.0,
        "Integrate an ensemble of two-layer networks on a dataset into caller-owned buffers.");
  m.def("sgd_batch", &sgd_batch_py, py::arg("seed"), py::arg("trajectory"), py::arg("step"),
        py::arg("samples"), py::arg("batch"), py::arg("replace") = false,
        "The minibatch indices of one SGD step, exactly as simulate_network draws them.");
  m.def("ntk_gram", &ntk_gram_py, py::arg("net"), py::arg("u").noconvert(),
        py::arg("w").noconvert(), py::arg("batch"), py::arg("x1").noconvert(),
        py::arg("x2").noconvert() = py::none(), py::arg("threads") = 0,
        "NTK Gram matrices (batch, n1, n2) of a batch of networks.");
  m.def("network_workspace_bytes", &network_workspace_bytes, py::arg("net"),
        py::arg("samples"), py::arg("n_probe"), py::arg("gram"), py::arg("metrics"),
        py::arg("linearized"), py::arg("pattern"), py::arg("move"), py::arg("n_test") = 0,
        py::arg("batch") = 0);
  m.def("piecewise_workspace_bytes", &piecewise_workspace_bytes, py::arg("net"),
        py::arg("samples"));
  m.def("gram_workspace_bytes", &gram_workspace_bytes, py::arg("net"), py::arg("batch"),
        py::arg("n1"), py::arg("n2"), py::arg("threads") = 0);
}

}  // namespace ntkflow::bindings
