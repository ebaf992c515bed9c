// _ppgate_worker: the worker loop, a CPython extension module that runs inside the caller's own
// interpreter (started by the node as `<python> ppgate_worker.py --fd 3 --node-pid PID`).
//
// It is built against the stable ABI (Py_LIMITED_API, CPython 3.8), so one build loads in every
// CPython from 3.8 on. serve(fd, handle) reads length-prefixed frames (lib/frame.hpp) from the
// node on the socketpair `fd`, hands each run message to handle(payload: bytes) -> bytes (the
// Python runtime, runtime.py) and writes the reply back as one frame, at once or, in a run of
// short jobs, with the replies after it (reply_writer). It returns when the node closes the socket.
//
// The GIL is held except around blocking reads and writes, so threads a job started still run
// while the worker waits for the next job.
#include "frame.hpp"
#include "held_replies.hpp"

#include <algorithm>
#include <atomic>
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
#include <ctime>
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

// The worker's only writer to its link. A short job's reply is held back while at least
// ppgate::jobs_waiting_to_hold_a_reply jobs wait here, and goes out with the replies after it in
// one write: a run of short jobs costs the node one wake-up, not one per job. A reply is held at
// most reply_hold_limit: a one-shot timer's signal writes the held replies out when the job running
// meanwhile takes longer, and so do a crash signal and os._exit (flush_replies), so the node hears
// of every job that ended before it hears of the worker's end, and blames the job that was running.
// The node asks where the worker is (a probe signal, answered at once, even mid-job): the held
// replies, then "running <id>", the job taken up last, before which the worker read its link last
// (worker_slot::probe). Nothing is held under --max-worker-memory: a kill by the kernel's memory
// limit gives no chance to write them.
// The signals are sent to the loop's thread (the process's first), so the handlers interrupt the
// loop itself: `editing` keeps them off while the loop changes `held` or writes, and leaves the
// loop to do what they found it busy with.
constexpr long reply_hold_limit_ns = 1'000'000;
constexpr std::size_t max_held_bytes = 64 * 1024;

enum loop_phase : int { between_jobs, in_job, waiting_for_frames };

struct reply_writer {
  int fd = -1;
  bool may_hold = false;
  std::string held;                                // complete frames not written yet
  volatile std::sig_atomic_t editing = 0;          // the loop is changing `held` or writing
  volatile std::sig_atomic_t timer_missed = 0;     // the timer fired while the loop was editing
  volatile std::sig_atomic_t timer_armed = 0;
  volatile std::sig_atomic_t probe_missed = 0;     // a probe the loop answers (it was not in a job)
  volatile std::sig_atomic_t phase = between_jobs;
  std::atomic<std::uint64_t> received{0};          // the last frame read (link_state::received)
  std::atomic<std::uint64_t> taken_up{0};          // the job running, or the last one taken up
  timer_t timer{};
};
reply_writer replies;

// Async-signal-safe: write(2) only. False when the link is broken. Keeps the GIL: replies fit the
// socket's buffer but for huge results, and between jobs no job thread is left to run (a job
// that leaves one retires its worker).
bool write_raw(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// From a signal handler: writes what is held, unless the loop is at it.
void write_held_from_signal() {
  if (in_forked_child || replies.editing || replies.held.empty()) return;
  write_raw(replies.fd, replies.held.data(), replies.held.size());
  replies.held.clear();  // (keeps its storage: no allocation)
}

// "<seq> running <id>", built without allocating (a signal handler sends it).
void write_probe_answer() {
  char body[64];
  char* p = std::to_chars(body, body + 24, replies.received.load()).ptr;
  constexpr std::string_view word = " running ";
  p = std::copy(word.begin(), word.end(), p);
  p = std::to_chars(p, body + sizeof body, replies.taken_up.load()).ptr;
  const auto n = static_cast<std::uint32_t>(p - body);
  char frame[ppgate::frame_header_size + sizeof body];
  for (std::size_t i = 0; i < ppgate::frame_header_size; ++i) frame[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  std::copy(body, p, frame + ppgate::frame_header_size);
  write_raw(replies.fd, frame, ppgate::frame_header_size + n);
}

void on_hold_timer(int) {
  const int saved = errno;
  replies.timer_armed = 0;
  if (replies.editing) replies.timer_missed = 1;
  else write_held_from_signal();
  errno = saved;
}

// In a job or waiting for frames, the answer is certain at once: the next job is taken up after a
// read of the link that starts after this signal, so it finds every note the node sent before.
// Between jobs, the loop answers as it takes the next one up (answer_missed_probe).
void on_probe(int) {
  const int saved = errno;
  if (in_forked_child) {
  } else if (replies.editing || replies.phase == between_jobs) {
    replies.probe_missed = 1;
  } else {
    write_held_from_signal();
    write_probe_answer();
  }
  errno = saved;
}

constexpr int crash_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
struct sigaction crash_previous[std::size(crash_signals)];

void on_crash(int sig) {
  // Only on the loop's thread: a crash on another (a library's) would race the loop for `held`.
  if (::gettid() == ::getpid()) write_held_from_signal();
  // The previous handler (faulthandler's, or the default action) takes it from here.
  for (std::size_t i = 0; i < std::size(crash_signals); ++i)
    if (crash_signals[i] == sig) ::sigaction(sig, &crash_previous[i], nullptr);
  ::raise(sig);
}

// The timer's and the probe's handlers both write to the link: neither interrupts the other.
bool handle_signal(int sig, void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART;  // job code's system calls go on
  ::sigemptyset(&action.sa_mask);
  ::sigaddset(&action.sa_mask, ppgate::worker_hold_timer_signal());
  ::sigaddset(&action.sa_mask, ppgate::worker_probe_signal());
  return ::sigaction(sig, &action, nullptr) == 0;
}

// Sets the writer up for `fd`; without `may_hold` (or a timer), every reply goes at once.
void start_replies(int fd, bool may_hold) {
  replies.fd = fd;
  // The probe arrives blocked (the node spawns the worker so, the client's forks block it): a
  // probe sent before this line is answered after it.
  const bool answers_probes = handle_signal(ppgate::worker_probe_signal(), on_probe);
  sigset_t probe;
  ::sigemptyset(&probe);
  ::sigaddset(&probe, ppgate::worker_probe_signal());
  if (answers_probes) ::pthread_sigmask(SIG_UNBLOCK, &probe, nullptr);
  if (!may_hold || !answers_probes) return;
  const int timer_signal = ppgate::worker_hold_timer_signal();
  if (!handle_signal(timer_signal, on_hold_timer)) return;
  // To this thread (the loop's), as the node's probes: a job's library threads (OpenBLAS's, say)
  // do not block the signal, and one of them taking it would race the loop for `held`.
  struct sigevent event {};
  event.sigev_notify = SIGEV_THREAD_ID;
  event.sigev_signo = timer_signal;
  event._sigev_un._tid = ::gettid();
  if (::timer_create(CLOCK_MONOTONIC, &event, &replies.timer) != 0) return;
  struct sigaction crash {};
  crash.sa_handler = on_crash;
  ::sigemptyset(&crash.sa_mask);
  for (std::size_t i = 0; i < std::size(crash_signals); ++i)
    ::sigaction(crash_signals[i], &crash, &crash_previous[i]);
  replies.may_hold = true;
}

void set_hold_timer(long ns) {
  struct itimerspec when {};
  when.it_value.tv_nsec = ns;  // 0: disarmed
  ::timer_settime(replies.timer, 0, &when, nullptr);
}

// Writes what is held. Throws os_error when the link is broken.
void write_held() {
  if (replies.held.empty()) return;
  replies.editing = 1;
  const bool written = write_raw(replies.fd, replies.held.data(), replies.held.size());
  const int err = errno;
  replies.held.clear();
  if (replies.timer_armed) {
    replies.timer_armed = 0;
    set_hold_timer(0);
  }
  replies.timer_missed = 0;
  replies.editing = 0;
  if (!written) throw os_error{err};
}

// Queues one frame, "<prefix><body>", and writes it now unless `may_wait` (enough jobs wait here)
// and it is small: then it goes with the next write, within reply_hold_limit.
void send_reply(std::string_view prefix, std::string_view body, bool may_wait) {
  replies.editing = 1;
  ppgate::append_frame(replies.held, prefix, body);
  replies.editing = 0;
  if (!may_wait || !replies.may_hold || replies.timer_missed || replies.held.size() > max_held_bytes) {
    write_held();
    return;
  }
  if (!replies.timer_armed) {
    replies.timer_armed = 1;
    set_hold_timer(reply_hold_limit_ns);
  }
  if (replies.timer_missed) write_held();  // it fired as it was being armed
}

// A probe that came between jobs, answered as the loop takes job `id` up (0: none, it is about
// to wait for frames): the link was read before, maybe before the node's notes arrived, so the
// answer names this job, which may run; those after it are taken up after a read that finds them.
void answer_missed_probe(std::uint64_t id) {
  if (!replies.probe_missed) return;
  replies.probe_missed = 0;
  if (id != 0) replies.taken_up = id;
  write_held();
  replies.editing = 1;
  write_probe_answer();
  replies.editing = 0;
}

// flush_replies(): writes the replies held back (before the process ends: os._exit, exec).
PyObject* flush_replies(PyObject*, PyObject*) {
  if (!in_forked_child && !replies.editing) {
    try {
      write_held();
    } catch (const os_error&) {
      // The node is gone; nobody is left to tell.
    }
  }
  Py_RETURN_NONE;
}

// Runs one job: handle(payload) must return bytes, the reply.
// `more_waiting`: other jobs are here already, so its reply may wait for theirs.
void run_job(PyObject* handle, std::string_view frame, const link_state& link, bool more_waiting) {
  py_ref payload(PyBytes_FromStringAndSize(frame.data(), static_cast<Py_ssize_t>(frame.size())));  // new ref
  if (!payload) throw python_error{};
  py_ref args(PyTuple_Pack(1, payload.get()));  // new ref
  if (!args) throw python_error{};
  py_ref reply(PyObject_Call(handle, args.get(), nullptr));  // new ref
  replies.phase = between_jobs;
  // A child the job forked (os.fork) that returned from the job must never answer for the worker
  // nor read its link: it ends here.
  if (in_forked_child) ::_exit(0);
  if (!reply) throw python_error{};
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(reply.get(), &data, &size) != 0) throw python_error{};
  const std::string_view text(data, static_cast<std::size_t>(size));
  // "<id> <status> <seconds> retire": the job left behind what this process cannot undo (or
  // "retire-memory": it is over --max-worker-memory). No further job may run here (the node
  // requeues those waiting); leave at once, without waiting for the job's threads as a normal
  // interpreter exit would.
  const std::string_view header = text.substr(0, text.find('\n'));
  const bool retire = header.ends_with(" retire") || header.ends_with(" retire-memory");
  send_reply(link.prefix(), text, more_waiting && !retire);
  if (retire) ::_exit(0);
}

// Reads "<seq> " off the front of a frame from the node; a seq out of order means job code read
// frames off the link.
std::string_view take_seq(std::string_view frame, link_state& link) {
  std::uint64_t seq = 0;
  const auto [p, ec] = std::from_chars(frame.data(), frame.data() + frame.size(), seq);
  if (ec != std::errc() || p == frame.data() + frame.size() || *p != ' ' || seq != link.received + 1)
    throw frames_taken{};
  link.received = seq;
  replies.received.store(seq, std::memory_order_relaxed);
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
  std::string buf(64 * 1024, '\0');
  // Job frames waiting (release notes are none): enough of them, and a reply may be held back.
  const auto jobs_waiting = [&] {
    return static_cast<std::size_t>(std::count_if(pending.begin(), pending.end(), [](const pending_frame& p) {
      return !p.body.starts_with("release ");
    }));
  };
  for (;;) {
    bool wait = pending.empty();
    if (wait) {  // nothing else to run: what is held goes before the wait
      write_held();
      answer_missed_probe(0);
    }
    // After a wait, the link is read once more: a probe answered during the wait promised that
    // the next job is taken up after a read that starts after it.
    bool woke = wait;
    ssize_t n;
    do {  // a full buffer means more may be waiting
      if (wait) replies.phase = waiting_for_frames;
      n = read_some(fd, buf.data(), buf.size(), wait);
      replies.phase = between_jobs;
      if (n == 0) return;  // the node closed the link: a normal stop
      if (n < 0 && errno != EAGAIN) throw os_error{errno};
      if (n < 0) break;
      wait = false;
      reader.feed(buf.data(), static_cast<std::size_t>(n));
    } while (static_cast<std::size_t>(n) == buf.size() || std::exchange(woke, false));
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
          send_reply(link.prefix(), "pong", false);
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
    if (skipped) {
      // Not run; but the function's definition and the values it carries are kept, since the
      // node sends those once per process and later jobs name them alone.
      note("skipped " + frame_text);
      send_reply(link.prefix(), std::to_string(id) + " skipped 0\n",
                 jobs_waiting() >= ppgate::jobs_waiting_to_hold_a_reply);
      continue;
    }
    link.last_job = id;
    replies.taken_up = id;
    replies.phase = in_job;
    answer_missed_probe(id);
    run_job(handle, frame_text, link, jobs_waiting() >= ppgate::jobs_waiting_to_hold_a_reply);
  }
}

void serve_loop(int fd, PyObject* handle, bool hold_replies) {
  start_replies(fd, hold_replies);
  link_state link;
  try {
    serve_frames(fd, handle, link);
  } catch (const frames_taken&) {
    // What this process holds cannot be trusted to be complete: the node requeues the jobs it
    // sent (none of them started) and replaces the worker.
    send_reply(link.prefix(), "lost " + std::to_string(link.last_job) + "\n", false);
  }
}

PyObject* serve(PyObject*, PyObject* args) {
  int fd = -1;
  PyObject* handle = nullptr;
  long node_pid = 0;
  int hold_replies = 1;
  if (!PyArg_ParseTuple(args, "iOl|p:serve", &fd, &handle, &node_pid, &hold_replies)) return nullptr;
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
    serve_loop(fd, handle, hold_replies != 0);
  } catch (const python_error&) {
    flush_replies(nullptr, nullptr);  // the jobs that ended before the loop broke are done
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

// The version tag CPython 3.8-3.13 keeps in every dict (PEP 509: it changes with each change to
// the dict), read at its place in PyDictObject, after the object's header and ma_used: the
// runtime asks after every job whether builtins and os.environ are as they were, and comparing
// the whole of builtins (~160 entries) cost ~1.6 us. The stable ABI does not show the field, so
// the runtime uses this only once it has seen, on the interpreter it runs in, that the number
// read changes whenever a dict does (ppgate_worker_runtime._dict_version_reader).
PyObject* dict_version(PyObject*, PyObject* d) {
  if (!PyDict_CheckExact(d)) {
    PyErr_SetString(PyExc_TypeError, "dict_version: a dict is needed");
    return nullptr;
  }
  constexpr std::size_t offset = 2 * sizeof(void*) + sizeof(Py_ssize_t);  // ob_refcnt, ob_type, ma_used
  unsigned long long tag = 0;
  std::memcpy(&tag, reinterpret_cast<const char*>(d) + offset, sizeof tag);
  return PyLong_FromUnsignedLongLong(tag);
}

PyMethodDef methods[] = {
    {"dict_version", dict_version, METH_O,
     "dict_version(d): CPython's private version tag of dict d (see the runtime before using it)."},
    {"children_alive", children_alive, METH_NOARGS,
     "children_alive(): whether this process has children still running (reaps the exited ones)."},
    {"flush_replies", flush_replies, METH_NOARGS,
     "flush_replies(): write the replies held back now (before the process ends or execs)."},
    {"serve", serve, METH_VARARGS,
     "serve(fd, handle, node_pid, hold_replies=True): run jobs from the node on socket fd until it\n"
     "closes the link; with hold_replies, short jobs' replies may go out together."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ppgate_worker", "The ppgate worker loop (C++ over the stable ABI).",
    -1, methods, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__ppgate_worker() { return PyModule_Create(&module_def); }
