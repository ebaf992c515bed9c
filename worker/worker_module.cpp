// _ppgate_worker: the worker loop, a CPython extension module that runs inside the caller's own
// interpreter (started by the node as `<python> ppgate_worker.py --fd 3 --node-pid PID`).
//
// It is built against the stable ABI (Py_LIMITED_API, CPython 3.8), so one build loads in every
// CPython from 3.8 on. serve(fd, handle) reads length-prefixed frames (lib/frame.hpp) from the
// node on the socketpair `fd`, hands each run message to handle(payload: bytes) -> bytes (the
// Python runtime, runtime.py) and writes the reply back as one frame. It returns when the node
// closes the socket.
//
// The GIL is held except around blocking reads and writes, so threads a job started still run
// while the worker waits for the next job.
#include "frame.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace {

// An owned (strong) reference. Construct it only from C-API calls that return a new reference.
class py_ref {
 public:
  explicit py_ref(PyObject* owned) : p_(owned) {}
  py_ref(const py_ref&) = delete;
  py_ref& operator=(const py_ref&) = delete;
  ~py_ref() { Py_XDECREF(p_); }
  PyObject* get() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  PyObject* p_;
};

// Thrown to leave serve() with the Python exception that is already set.
struct python_error {};

// Thrown to leave serve() with an OSError built from errno.
struct os_error {
  int err;
};

// Keeps the GIL: a reply fits the socket's buffer but for huge results, and between jobs no job
// thread is left to run (a job that leaves one retires its worker).
void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw os_error{errno};
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Reads what has arrived; with `wait`, blocks until something does (without the GIL). Without
// `wait`, returns -1 with errno EAGAIN when nothing has.
ssize_t read_some(int fd, char* buf, std::size_t size, bool wait) {
  ssize_t n;
  if (!wait) {
    do {
      n = ::recv(fd, buf, size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EWOULDBLOCK) errno = EAGAIN;
    return n;
  }
  do {
    Py_BEGIN_ALLOW_THREADS
    n = ::read(fd, buf, size);
    Py_END_ALLOW_THREADS
  } while (n < 0 && errno == EINTR);
  return n;
}

// The job id a run message starts with: {"tag":N,...}
std::uint64_t job_id_of(std::string_view frame) {
  constexpr std::string_view prefix = "{\"tag\":";
  std::uint64_t id = 0;
  if (frame.starts_with(prefix))
    std::from_chars(frame.data() + prefix.size(), frame.data() + frame.size(), id);
  return id;
}

// Node -> worker frames are "<seq> <body>", seq counting 1, 2, ... per process, so that a frame
// job code read off the link (os.read(3, ...)) shows as a gap. The worker's replies start with
// "<seq> ": the last frame it received, which tells the node whether its latest frames may have
// been taken (then it sends a "sync" frame, which exposes the gap).
struct link_state {
  std::uint64_t received = 0;   // seq of the last frame read
  std::uint64_t last_job = 0;   // the last job this process ran: the one that read a missing frame
  std::string prefix() const { return std::to_string(received) + ' '; }
};

// Thrown when frames are missing: job code took them off the link.
struct frames_taken {};

// Set in a child that a job forked (os.fork runs the fork handlers; getpid() per job would cost a
// system call).
bool in_forked_child = false;

// Runs one job: handle(payload) must return bytes, the reply.
void run_job(int fd, PyObject* handle, std::string_view frame, const link_state& link, std::string& out) {
  py_ref payload(PyBytes_FromStringAndSize(frame.data(), static_cast<Py_ssize_t>(frame.size())));  // new ref
  if (!payload) throw python_error{};
  py_ref args(PyTuple_Pack(1, payload.get()));  // new ref
  if (!args) throw python_error{};
  py_ref reply(PyObject_Call(handle, args.get(), nullptr));  // new ref
  // A child the job forked (os.fork) that returned from the job must never answer for the worker
  // nor read its link: it ends here.
  if (in_forked_child) ::_exit(0);
  if (!reply) throw python_error{};
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(reply.get(), &data, &size) != 0) throw python_error{};
  const std::string_view text(data, static_cast<std::size_t>(size));
  ppgate::append_frame(out, link.prefix(), text);
  write_all(fd, out);
  // "<id> <status> <seconds> retire": the job left behind what this process cannot undo (or
  // "retire-memory": it is over --max-worker-memory). No further job may run here (the node
  // requeues those waiting); leave at once, without waiting for the job's threads as a normal
  // interpreter exit would.
  const std::string_view header = text.substr(0, text.find('\n'));
  if (header.ends_with(" retire") || header.ends_with(" retire-memory")) ::_exit(0);
}

// Reads "<seq> " off the front of a frame from the node; a seq out of order means job code read
// frames off the link.
std::string_view take_seq(std::string_view frame, link_state& link) {
  std::uint64_t seq = 0;
  const auto [p, ec] = std::from_chars(frame.data(), frame.data() + frame.size(), seq);
  if (ec != std::errc() || p == frame.data() + frame.size() || *p != ' ' || seq != link.received + 1)
    throw frames_taken{};
  link.received = seq;
  return frame.substr(static_cast<std::size_t>(p - frame.data()) + 1);
}

// Bodies are run messages (JSON), "skip <id>" notes (the node took that job back before it
// started), "release <key> ..." (values put once that no job takes any more: handle() drops
// them, in their turn among the jobs, and nothing is answered), "sync" (nothing to do; it
// only shows a gap) and "ping" (answered "pong" at once). Jobs run one at a time in arrival
// order. Before each job the worker reads everything that has arrived, so the frames queued
// behind a job are out of its reach by the time it runs, and a skip note reaches the worker
// before the job it names.
void serve_frames(int fd, PyObject* handle, link_state& link) {
  ppgate::frame_reader reader;
  // Frames received and not yet taken up, in order. A skip note marks the run messages of its
  // job that are here: only those, since the node may send the same job again later (it was
  // taken back and came back to this worker, or it is rerun), and that later one must run.
  struct pending_frame {
    std::string body;
    bool skip = false;
  };
  std::deque<pending_frame> pending;
  std::string out;
  std::string buf(64 * 1024, '\0');
  for (;;) {
    bool wait = pending.empty();
    ssize_t n;
    do {  // a full buffer means more may be waiting
      n = read_some(fd, buf.data(), buf.size(), wait);
      if (n == 0) return;  // the node closed the link: a normal stop
      if (n < 0 && errno != EAGAIN) throw os_error{errno};
      if (n < 0) break;
      wait = false;
      reader.feed(buf.data(), static_cast<std::size_t>(n));
    } while (static_cast<std::size_t>(n) == buf.size());
    std::string_view frame;
    try {
      while (reader.next(frame)) {
        const std::string_view body = take_seq(frame, link);
        if (body.starts_with("skip ")) {
          // A note for a job that has started (or ended) here came too late: it finds nothing.
          std::uint64_t id = 0;
          std::from_chars(body.data() + 5, body.data() + body.size(), id);
          for (auto& p : pending)
            if (!p.body.starts_with("release ") && job_id_of(p.body) == id) p.skip = true;
        } else if (body == "ping") {
          // A successor being readied (worker_slot::ready_successor): answered at once, which
          // tells the node this process has loaded and serves.
          out.clear();
          ppgate::append_frame(out, link.prefix(), "pong");
          write_all(fd, out);
        } else if (body != "sync") {
          pending.push_back({std::string(body)});
        }
      }
    } catch (const ppgate::frame_error&) {
      throw frames_taken{};  // a frame read in part leaves the rest looking like a huge length
    }
    if (pending.empty()) continue;

    const std::string frame_text = std::move(pending.front().body);
    const bool skipped = pending.front().skip;
    pending.pop_front();
    const auto note = [&](std::string_view text) {  // handled in Python, no reply
      py_ref payload(PyBytes_FromStringAndSize(text.data(), static_cast<Py_ssize_t>(text.size())));
      if (!payload) throw python_error{};
      py_ref ignored(PyObject_CallFunctionObjArgs(handle, payload.get(), nullptr));
      if (!ignored) throw python_error{};
    };
    if (frame_text.starts_with("release ")) {
      note(frame_text);
      continue;
    }
    const std::uint64_t id = job_id_of(frame_text);
    out.clear();
    if (skipped) {
      // Not run; but the function's definition and the values it carries are kept, since the
      // node sends those once per process and later jobs name them alone.
      note("skipped " + frame_text);
      ppgate::append_frame(out, link.prefix(), std::to_string(id) + " skipped 0\n");
      write_all(fd, out);
      continue;
    }
    link.last_job = id;
    run_job(fd, handle, frame_text, link, out);
  }
}

void serve_loop(int fd, PyObject* handle) {
  link_state link;
  try {
    serve_frames(fd, handle, link);
  } catch (const frames_taken&) {
    // What this process holds cannot be trusted to be complete: the node requeues the jobs it
    // sent (none of them started) and replaces the worker.
    std::string out;
    ppgate::append_frame(out, link.prefix(), "lost " + std::to_string(link.last_job) + "\n");
    write_all(fd, out);
  }
}

PyObject* serve(PyObject*, PyObject* args) {
  int fd = -1;
  PyObject* handle = nullptr;
  long node_pid = 0;
  if (!PyArg_ParseTuple(args, "iOl:serve", &fd, &handle, &node_pid)) return nullptr;
  if (!PyCallable_Check(handle)) {
    PyErr_SetString(PyExc_TypeError, "serve: handle must be callable");
    return nullptr;
  }
  // Die with the node even when a job keeps this process from reading the socket (EOF on the
  // socket covers a node that died before this line).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ::pthread_atfork(nullptr, nullptr, [] { in_forked_child = true; });
  // A node that died before that line sends no signal: this worker would run the jobs already in
  // its socket for nobody.
  if (::getppid() != static_cast<pid_t>(node_pid)) Py_RETURN_NONE;
  try {
    serve_loop(fd, handle);
  } catch (const python_error&) {
    return nullptr;
  } catch (const os_error& e) {
    errno = e.err;
    return PyErr_SetFromErrno(PyExc_OSError);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// Whether this process has children still running (zombies are reaped on the way). In C, as the
// runtime asks after every job: Python's ChildProcessError alone costs more than the system call.
PyObject* children_alive(PyObject*, PyObject*) {
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) continue;
    if (pid == 0) Py_RETURN_TRUE;
    if (errno == EINTR) continue;
    Py_RETURN_FALSE;  // ECHILD: none
  }
}

PyMethodDef methods[] = {
    {"children_alive", children_alive, METH_NOARGS,
     "children_alive(): whether this process has children still running (reaps the exited ones)."},
    {"serve", serve, METH_VARARGS,
     "serve(fd, handle, node_pid): run jobs from the node on socket fd until it closes the link."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ppgate_worker", "The ppgate worker loop (C++ over the stable ABI).",
    -1, methods, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__ppgate_worker() { return PyModule_Create(&module_def); }
