// ppgate-worker: one embedded CPython interpreter running one job at a time.
//
// It reads length-prefixed frames (lib/frame.hpp) from its gateway on a socketpair (fd 3 by
// default), hands each to the Python runtime (runtime.py, compiled into this binary) and writes
// the runtime's reply back as one frame. It exits when the gateway closes the socket or dies.
#include "frame.hpp"
#include "python_embed.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <unistd.h>

namespace ppgate::worker {
std::string_view runtime_source();  // generated from runtime.py
}

namespace {

using ppgate::worker::py_ref;

constexpr int exit_usage = 64;
constexpr int exit_protocol = 76;
constexpr int exit_internal = 70;

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      std::exit(0);  // the gateway is gone; nobody is left to answer
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Blocking read that lets other Python threads (started by jobs) run meanwhile.
ssize_t read_some(int fd, char* buf, std::size_t size) {
  ssize_t n;
  Py_BEGIN_ALLOW_THREADS
  do {
    n = ::read(fd, buf, size);
  } while (n < 0 && errno == EINTR);
  Py_END_ALLOW_THREADS
  return n;
}

py_ref load_runtime() {
  const std::string source(ppgate::worker::runtime_source());
  py_ref code(Py_CompileString(source.c_str(), "<ppgate-worker>", Py_file_input));  // new ref
  if (!code) ppgate::worker::throw_python_error("cannot compile the worker runtime");
  py_ref module(PyImport_ExecCodeModule("ppgate_worker_runtime", code.get()));  // new ref
  if (!module) ppgate::worker::throw_python_error("cannot load the worker runtime");
  py_ref handle(PyObject_GetAttrString(module.get(), "handle"));  // new ref
  if (!handle) ppgate::worker::throw_python_error("the worker runtime has no handle()");
  return handle;
}

int serve(int fd) {
  py_ref handle = load_runtime();
  ppgate::frame_reader reader;
  std::string out;
  std::string buf(64 * 1024, '\0');
  for (;;) {
    const ssize_t n = read_some(fd, buf.data(), buf.size());
    if (n == 0) return 0;  // the gateway closed the link: a normal stop
    if (n < 0) {
      std::fprintf(stderr, "ppgate-worker: read: %s\n", std::strerror(errno));
      return exit_protocol;
    }
    reader.feed(buf.data(), static_cast<std::size_t>(n));
    std::string_view frame;
    try {
      while (reader.next(frame)) {
        py_ref payload(PyBytes_FromStringAndSize(frame.data(), static_cast<Py_ssize_t>(frame.size())));  // new ref
        if (!payload) ppgate::worker::throw_python_error("out of memory");
        py_ref reply(PyObject_CallOneArg(handle.get(), payload.get()));  // new ref
        if (!reply) ppgate::worker::throw_python_error("the worker runtime failed");
        char* data = nullptr;
        Py_ssize_t size = 0;
        if (PyBytes_AsStringAndSize(reply.get(), &data, &size) != 0)
          ppgate::worker::throw_python_error("the worker runtime returned no bytes");
        out.clear();
        ppgate::append_frame(out, std::string_view(data, static_cast<std::size_t>(size)));
        write_all(fd, out);
      }
    } catch (const ppgate::frame_error& e) {
      std::fprintf(stderr, "ppgate-worker: %s\n", e.what());
      return exit_protocol;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int fd = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--fd" && i + 1 < argc) {
      fd = std::atoi(argv[++i]);
    } else if (arg == "--help" || arg == "-h") {
      std::puts("usage: ppgate-worker [--fd N]\n\n"
                "Runs Python jobs for a ppgate gateway over the socket on fd N (default 3).\n"
                "It is started by `ppgate serve`, not by hand.");
      return 0;
    } else {
      std::fprintf(stderr, "ppgate-worker: unknown argument '%s' (try --help)\n", argv[i]);
      return exit_usage;
    }
  }
  // Die with the gateway even when a job keeps us from reading the socket.
  // (EOF on the socket covers the case where the gateway died before this line.)
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::fcntl(fd, F_GETFD) < 0) {
    std::fprintf(stderr, "ppgate-worker: fd %d is not open; this program is started by ppgate\n", fd);
    return exit_usage;
  }
  try {
    ppgate::worker::interpreter python(argv[0]);
    return serve(fd);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ppgate-worker: %s\n", e.what());
    return exit_internal;
  }
}
