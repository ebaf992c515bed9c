// Small RAII types over the CPython C API: the interpreter and an owned reference.
// The worker is single-threaded and holds the GIL except around blocking reads.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace ppgate::worker {

// An owned (strong) reference. Construct it only from C-API calls that return a new reference.
class py_ref {
 public:
  py_ref() = default;
  explicit py_ref(PyObject* owned) : p_(owned) {}
  py_ref(const py_ref&) = delete;
  py_ref& operator=(const py_ref&) = delete;
  py_ref(py_ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  py_ref& operator=(py_ref&& o) noexcept {
    if (this != &o) {
      Py_XDECREF(p_);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  ~py_ref() { Py_XDECREF(p_); }

  PyObject* get() const { return p_; }
  PyObject* release() { return std::exchange(p_, nullptr); }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  PyObject* p_ = nullptr;
};

// Prints the pending Python exception to stderr and throws, for errors of the runtime itself
// (never of a job: the runtime reports those as replies).
[[noreturn]] inline void throw_python_error(const std::string& what) {
  PyErr_Print();
  throw std::runtime_error(what);
}

// The embedded interpreter, configured in isolated mode: PYTHONPATH, PYTHONHOME and the user's
// site directory are ignored, so a worker never mixes in another interpreter's files. The system
// site-packages stay importable, so jobs can use Debian's Python packages.
class interpreter {
 public:
  explicit interpreter(const char* program) {
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 1;
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, program);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
      throw std::runtime_error(std::string("cannot initialize Python: ") +
                               (status.err_msg ? status.err_msg : "unknown error"));
    }
  }
  ~interpreter() { Py_FinalizeEx(); }
  interpreter(const interpreter&) = delete;
  interpreter& operator=(const interpreter&) = delete;
};

}  // namespace ppgate::worker
