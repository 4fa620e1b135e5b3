#include <pybind11/stl.h>

#include <optional>

#include "bind_common.hpp"

namespace ntkflow::bindings {

namespace {

void simulate_linear_py(LinearModel model, const CArray& sigma, const CArray& beta,
                        InitSpec init, const std::optional<CArray>& u0,
                        const std::optional<CArray>& w0, Schedule sched, const CArray& times,
                        Index trajectories, const py::dict& records, bool params_all,
                        LinearMethod method, const py::object& progress) {
  const Index n = trajectories, m = model.width, d = model.dim, T = times.size();
  if (n < 1 || m < 1 || d < 1) throw py::value_error("trajectories, width and dim must be >= 1");
  model.sigma = in_buffer(sigma, d * d, "Sigma");
  model.beta = in_buffer(beta, d, "beta");
  set_initial(init, u0, w0, n, m, d);
  sched.times = times.data();
  sched.n_times = T;
  const Records out = common_records(records, n, T, m, d, params_all);
  run_cancellable([&](CancelToken* token) {
    simulate_linear(model, init, sched, method, n, out, token);
  }, progress);
}

py::tuple initial_params_py(InitSpec init, const std::optional<CArray>& u0,
                            const std::optional<CArray>& w0, Index width, Index dim,
                            Index trajectories, int threads) {
  if (trajectories < 1 || width < 1 || dim < 1)
    throw py::value_error("trajectories, width and dim must be >= 1");
  set_initial(init, u0, w0, trajectories, width, dim);
  CArray u({trajectories, width * init.outputs});
  CArray w({trajectories, width, dim});
  double* up = u.mutable_data();
  double* wp = w.mutable_data();
  {
    py::gil_scoped_release nogil;
    initial_params(init, width, dim, trajectories, up, wp, threads);
  }
  return py::make_tuple(u, w);
}

}  // namespace

void bind_linear(py::module_& m) {
  // module_local: each instruction-set build is its own module with the same C++ types.
  py::enum_<Solver>(m, "Solver", py::module_local())
      .value("euler", Solver::euler)
      .value("rk4", Solver::rk4)
      .value("dopri5", Solver::dopri5)
      .value("gd", Solver::gd)
      .value("rodas4", Solver::rodas4)
      .value("automatic", Solver::automatic);

  py::enum_<LinearMethod>(m, "LinearMethod", py::module_local())
      .value("fused", LinearMethod::fused)
      .value("stagewise", LinearMethod::stagewise)
      .value("reduced", LinearMethod::reduced);

  py::class_<LinearModel>(m, "LinearModel", py::module_local())
      .def(py::init<>())
      .def_readwrite("width", &LinearModel::width)
      .def_readwrite("dim", &LinearModel::dim)
      .def_readwrite("kappa", &LinearModel::kappa)
      .def_readwrite("eta_u", &LinearModel::eta_u)
      .def_readwrite("eta_w", &LinearModel::eta_w)
      .def_readwrite("lambda_u", &LinearModel::lambda_u)
      .def_readwrite("lambda_w", &LinearModel::lambda_w)
      .def_readwrite("loss_min", &LinearModel::loss_min);

  py::class_<InitSpec>(m, "InitSpec", py::module_local())
      .def(py::init<>())
      .def_readwrite("given", &InitSpec::given)
      .def_readwrite("s_u", &InitSpec::s_u)
      .def_readwrite("s_w", &InitSpec::s_w)
      .def_readwrite("correlation", &InitSpec::correlation)
      .def_readwrite("copy", &InitSpec::copy)
      .def_readwrite("seed", &InitSpec::seed)
      .def_readwrite("first_trajectory", &InitSpec::first_trajectory)
      .def_readwrite("outputs", &InitSpec::outputs)
      .def_readwrite("bias", &InitSpec::bias)
      .def_readwrite("s_b", &InitSpec::s_b);

  py::class_<Schedule>(m, "Schedule", py::module_local())
      .def(py::init<>())
      .def_readwrite("solver", &Schedule::solver)
      .def_readwrite("dt", &Schedule::dt)
      .def_readwrite("lr", &Schedule::lr)
      .def_readwrite("rtol", &Schedule::rtol)
      .def_readwrite("atol", &Schedule::atol)
      .def_readwrite("h0", &Schedule::h0)
      .def_readwrite("max_steps", &Schedule::max_steps)
      .def_readwrite("loss_threshold", &Schedule::loss_threshold)
      .def_readwrite("threads", &Schedule::threads);

  m.def("simulate_linear", &simulate_linear_py, py::arg("model"), py::arg("sigma").noconvert(),
        py::arg("beta").noconvert(), py::arg("init"), py::arg("u0").noconvert() = py::none(),
        py::arg("w0").noconvert() = py::none(), py::arg("schedule"),
        py::arg("times").noconvert(), py::arg("trajectories"), py::arg("records"),
        py::arg("params_all") = false, py::arg("method") = LinearMethod::fused,
        py::arg("progress") = py::none(),
        "Integrate an ensemble of linear two-layer networks into caller-owned record buffers.");
  m.def("initial_params", &initial_params_py, py::arg("init"),
        py::arg("u0").noconvert() = py::none(), py::arg("w0").noconvert() = py::none(),
        py::arg("width"), py::arg("dim"), py::arg("trajectories"), py::arg("threads") = 0,
        "Initial parameters exactly as simulate_linear draws them: (u, W).");
}

}  // namespace ntkflow::bindings
