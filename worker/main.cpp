// ppgate-worker: one embedded CPython interpreter running one job at a time.
//
// It reads length-prefixed frames (lib/frame.hpp) from its gateway on a socketpair (fd 3 by
// default), hands each to the Python runtime (runtime.py, compiled into this binary) and writes
// the runtime's reply back as one frame. It exits when the gateway closes the socket or dies.
#include "frame.hpp"
#include "python_embed.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <deque>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unordered_set>
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

// Reads what has arrived; with `wait`, blocks until something does, letting other Python threads
// (started by jobs) run meanwhile. Without `wait`, returns -1 with errno EAGAIN when nothing has.
ssize_t read_some(int fd, char* buf, std::size_t size, bool wait) {
  ssize_t n;
  if (!wait) {
    do {
      n = ::recv(fd, buf, size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EWOULDBLOCK) errno = EAGAIN;
    return n;
  }
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

// The id a run message starts with: {"id":N,...}
std::uint64_t job_id_of(std::string_view frame) {
  constexpr std::string_view prefix = "{\"id\":";
  std::uint64_t id = 0;
  if (frame.starts_with(prefix))
    std::from_chars(frame.data() + prefix.size(), frame.data() + frame.size(), id);
  return id;
}

// Frames are run messages (JSON) and "skip <id>" notes: the gateway took that job back before
// it started. Jobs run one at a time in arrival order; between two jobs the worker picks up
// whatever has arrived meanwhile, so a skip note reaches it before the job it names.
int serve(int fd) {
  py_ref handle = load_runtime();
  ppgate::frame_reader reader;
  std::deque<std::string> pending;
  std::unordered_set<std::uint64_t> skip;
  std::deque<std::uint64_t> recently_done;  // a skip note for one of these came too late
  std::string out;
  std::string buf(64 * 1024, '\0');
  for (;;) {
    const ssize_t n = read_some(fd, buf.data(), buf.size(), /*wait=*/pending.empty());
    if (n == 0) return 0;  // the gateway closed the link: a normal stop
    if (n < 0 && errno != EAGAIN) {
      std::fprintf(stderr, "ppgate-worker: read: %s\n", std::strerror(errno));
      return exit_protocol;
    }
    try {
      if (n > 0) {
        reader.feed(buf.data(), static_cast<std::size_t>(n));
        std::string_view frame;
        while (reader.next(frame)) {
          if (frame.starts_with("skip ")) {
            std::uint64_t id = 0;
            std::from_chars(frame.data() + 5, frame.data() + frame.size(), id);
            if (std::find(recently_done.begin(), recently_done.end(), id) == recently_done.end())
              skip.insert(id);
          } else {
            pending.emplace_back(frame);
          }
        }
      }
    } catch (const ppgate::frame_error& e) {
      std::fprintf(stderr, "ppgate-worker: %s\n", e.what());
      return exit_protocol;
    }
    if (pending.empty()) continue;

    const std::string frame = std::move(pending.front());
    pending.pop_front();
    const std::uint64_t id = job_id_of(frame);
    recently_done.push_back(id);
    if (recently_done.size() > 16) recently_done.pop_front();
    out.clear();
    if (skip.erase(id) > 0) {
      ppgate::append_frame(out, std::to_string(id) + " skipped 0\n");
      write_all(fd, out);
      continue;
    }
    py_ref payload(PyBytes_FromStringAndSize(frame.data(), static_cast<Py_ssize_t>(frame.size())));  // new ref
    if (!payload) ppgate::worker::throw_python_error("out of memory");
    py_ref reply(PyObject_CallOneArg(handle.get(), payload.get()));  // new ref
    if (!reply) ppgate::worker::throw_python_error("the worker runtime failed");
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(reply.get(), &data, &size) != 0)
      ppgate::worker::throw_python_error("the worker runtime returned no bytes");
    ppgate::append_frame(out, std::string_view(data, static_cast<std::size_t>(size)));
    write_all(fd, out);
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
