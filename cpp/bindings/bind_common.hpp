// Helpers shared by the binding units: checked views of caller-owned NumPy buffers and the
// cancel hook. Nothing here converts or copies: the Python layer already normalised.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ntkflow/core.hpp"

namespace ntkflow::bindings {

namespace py = pybind11;
using CArray = py::array_t<double, py::array::c_style>;

/// Pointer into records[name] after checking dtype, layout, writability and shape, so that a
/// mistake in the Python layer is an exception here rather than memory corruption.
template <class T>
T* out_buffer(const py::dict& records, const char* name, const std::vector<py::ssize_t>& shape) {
  if (!records.contains(name) || records[name].is_none()) return nullptr;
  py::object obj = records[name];
  if (!py::isinstance<py::array_t<T, py::array::c_style>>(obj))
    throw py::type_error(std::string("record buffer '") + name +
                         "' must be a C-contiguous array of the right dtype");
  auto arr = py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(obj);
  if (!arr.writeable()) throw py::value_error(std::string("record buffer '") + name + "' is read-only");
  bool same = arr.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = arr.shape(i) == shape[i];
  if (!same) throw py::value_error(std::string("record buffer '") + name + "' has the wrong shape");
  return arr.mutable_data();
}

/// Checks that a read-only input holds exactly `count` elements.
inline const double* in_buffer(const CArray& a, py::ssize_t count, const char* name) {
  if (a.size() != count)
    throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) +
                          " elements; expected " + std::to_string(count));
  return a.data();
}

/// Points `init` at the given initial parameters, (n, m, c) and (n, m, d), when it uses them.
inline void set_initial(InitSpec& init, const std::optional<CArray>& u0,
                        const std::optional<CArray>& w0, Index n, Index m, Index d) {
  if (!init.given) return;
  if (!u0 || !w0) throw py::value_error("given initial parameters need u0 and w0");
  init.u0 = in_buffer(*u0, n * m * init.outputs, "u0");
  init.w0 = in_buffer(*w0, n * m * d, "w0");
}

/// The records every simulation writes, from the caller's buffers (absent ones stay null).
inline Records common_records(const py::dict& records, Index n, Index T, Index m, Index d,
                              bool params_all, Index c = 1) {
  const Index tp = params_all ? T : 1;
  Records out;
  out.params_all = params_all;
  out.loss = out_buffer<double>(records, "loss", {n, T});
  out.p = out_buffer<double>(records, "p", {n, T, d * c});
  out.norm_u2 = out_buffer<double>(records, "norm_u2", {n, T});
  out.norm_w2 = out_buffer<double>(records, "norm_w2", {n, T});
  out.alignment = out_buffer<double>(records, "alignment", {n, T});
  out.ntk = out_buffer<double>(records, "ntk", {n, T, d, d});
  out.drift = out_buffer<double>(records, "balance_drift", {n, T});
  out.delta_mean = out_buffer<double>(records, "delta_mean", {n, T});
  out.delta_std = out_buffer<double>(records, "delta_std", {n, T});
  out.delta_drift = out_buffer<double>(records, "delta_drift", {n, T});
  out.deltas = out_buffer<double>(records, "deltas", {n, T, m});
  out.u = out_buffer<double>(records, "u", {n, tp, m * c});
  out.w = out_buffer<double>(records, "W", {n, tp, m, d});
  out.status = out_buffer<std::int8_t>(records, "status", {n});
  out.t_fail = out_buffer<double>(records, "t_fail", {n});
  out.steps = out_buffer<std::int64_t>(records, "steps", {n});
  out.rejected = out_buffer<std::int64_t>(records, "rejected", {n});
  out.events = out_buffer<std::int64_t>(records, "events", {n});
  out.t_hit = out_buffer<double>(records, "t_hit", {n});
  out.t_stiff = out_buffer<double>(records, "t_stiff", {n});
  return out;
}

/// Runs `work` without the GIL; Ctrl-C (seen by the hook on the calling thread) becomes the
/// pending KeyboardInterrupt. `progress`, if not None, is called as progress(done) with the
/// number of finished trajectories: from the same hook (about every interval_s, while the
/// GIL is held anyway) when the count changed, and once more at the end. An exception it
/// raises stops the run and is re-raised.
template <class Work>
void run_cancellable(Work&& work, const py::object& progress = py::none()) {
  CancelToken token;
  std::int64_t shown = -1;
  token.poll = [&token, &progress, &shown] {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) return true;
    const std::int64_t done = token.done.load(std::memory_order_relaxed);
    if (progress.is_none() || done == shown) return false;
    shown = done;
    try {
      progress(done);
    } catch (py::error_already_set& e) {
      e.restore();  // pending again: re-raised below, like Ctrl-C
      return true;
    }
    return false;
  };
  bool cancelled = false;
  {
    py::gil_scoped_release nogil;  // safe: the core touches raw buffers only
    try {
      work(&token);
    } catch (const Cancelled&) {
      cancelled = true;
    }
  }
  if (cancelled) {
    if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
  const std::int64_t done = token.done.load();
  if (!progress.is_none() && done != shown) progress(done);
}

}  // namespace ntkflow::bindings
