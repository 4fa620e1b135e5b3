// Helpers shared by the binding units: checked views of caller-owned NumPy buffers and the
// cancel hook. Nothing here converts or copies: the Python layer already normalised.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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

/// Runs `work` without the GIL; Ctrl-C (seen by the hook on the calling thread) becomes the
/// pending KeyboardInterrupt.
template <class Work>
void run_cancellable(Work&& work) {
  CancelToken token;
  token.poll = [] {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
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
}

}  // namespace ntkflow::bindings
