#include "worker_slot.hpp"

#include "held_replies.hpp"

#include "job_message.hpp"
#include "json_writer.hpp"
#include "local_pool.hpp"
#include "log.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <csignal>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <system_error>
#include <unistd.h>


namespace ppgate {

std::chrono::nanoseconds stall_limit(const function_def& f) {
  const auto usual = std::chrono::duration<double>(4 * f.mean_run_seconds);
  return std::max<std::chrono::nanoseconds>(std::chrono::milliseconds(2),
                                            std::chrono::duration_cast<std::chrono::nanoseconds>(usual));
}

// Jobs wait behind a running job only when its function is known to take less than this: behind
// a longer job, a round trip saved is nothing, and a job held there could run elsewhere.
constexpr double max_run_seconds_to_wait_behind = 0.01;

// How long the slot waits for a worker to answer a probe before it acts without the answer.
constexpr auto max_probe_wait = std::chrono::milliseconds(100);

worker_slot::worker_slot(net::any_io_executor ex, scheduler& sched, local_pool& pool,
                         const worker_options& opts)
    : ex_(ex),
      sched_(sched),
      pool_(pool),
      opts_(opts),
      deadline_(ex),
      probe_timer_(ex),
      stall_timer_(ex),
      // A fresh process per job leaves nothing to place behind the running job.
      max_in_flight_(opts.max_jobs_per_process == 1 ? 1 : 16) {}

node& worker_slot::owner() { return pool_; }

void worker_slot::launch(std::unique_ptr<worker_process> adopted) {
  adopted_ = std::move(adopted);
  net::co_spawn(ex_, [self = shared_from_this()]() { return self->supervise(); },
                log::on_failure("worker supervisor"));
}

net::awaitable<void> worker_slot::supervise() {
  auto self = shared_from_this();  // a retired link lives until its process is reaped
  int consecutive_spawn_failures = 0;
  int consecutive_early_exits = 0;
  while (!retiring_) {
    std::string spawn_error;
    bool readied = false;
    provisional_ = false;
    handing_over_ = false;
    try {
      if (adopted_) {
        proc_ = std::move(adopted_);
        provisional_ = true;
      } else if (successor_ && successor_ready_) {
        proc_ = std::move(successor_);  // readied while the adopted process served
        readied = true;
      } else {
        drop_successor();  // not ready: the slot spawns now
        spawn_process();
      }
      successor_ready_ = false;
      oom_kills_seen_ = cgroup_ ? cgroup_->oom_kills() : 0;
      consecutive_spawn_failures = 0;
    } catch (const std::exception& e) {
      spawn_error = e.what();
    }
    if (!proc_) {
      // A worker binary that cannot start is an operator problem; keep retrying, slowly.
      log::error("cannot start worker: ", spawn_error);
      const auto backoff = std::chrono::milliseconds(100 << std::min(++consecutive_spawn_failures, 5));
      net::steady_timer t(ex_, backoff);
      co_await t.async_wait(use_nothrow_awaitable);
      continue;
    }
    ++generation_;
    process_jobs_ = 0;
    fn_ids_.clear();
    values_.clear();
    reader_ = frame_reader();
    writing_.clear();
    outbox_.clear();
    frames_sent_ = readied ? 1 : 0;  // a readied successor's frame 1 was its ping
    recently_finished_.clear();
    probe_waiters_.clear();
    probe_next_.clear();
    probe_sent_ = false;
    probe_fallback_armed_ = false;
    probe_timer_.cancel();
    stall_timer_.cancel();
    stall_armed_ = false;
    stalled_ = false;
    replied_ = false;
    restart_reason_.reset();
    const auto spawned = steady_clock::now();
    log::debug("worker ", proc_->pid(), provisional_ ? " adopted" : " started");

    co_await serve();
    // EOF or a kill: whatever happens next, this process takes no more jobs.
    const bool exited_on_its_own = accepting_;
    leave_scheduler();

    const std::string why = co_await proc_->wait_exit();
    log::debug("worker ", proc_->pid(), " ", why);
    const bool killed_for_memory = cgroup_ && cgroup_->oom_kills() > oom_kills_seen_;
    if (killed_for_memory) restart_reason_ = restart_reason::memory;
    // The front job was running when the process died; the ones behind it had not started.
    std::deque<in_flight> lost;
    lost.swap(in_flight_);
    // Back to the queue last first, so they keep their order there.
    for (std::size_t i = lost.size(); i-- > 1;)
      if (lost[i].j != nullptr) sched_.requeue(*lost[i].j);
    if (!lost.empty() && lost.front().j != nullptr) {
      job& j = *lost.front().j;
      if (killed_for_memory) {
        // Not a worker death that a rerun survives: the job failed, and says why.
        log::warn("worker ", proc_->pid(), " crossed --max-worker-memory while running job ", j.id);
        ++jobs_run_;
        sched_.failed(j, memory_kill_outcome(), std::chrono::duration<double>(steady_clock::now() - j.started).count());
      } else if (provisional_ && !replied_) {
        // A fork of the client that never answered most likely failed to become a worker at
        // all: its first job goes back to the queue, for a process of the slot's own.
        sched_.requeue(j);
      } else {
        log::warn("worker ", proc_->pid(), " ", why, " while running job ", j.id);
        sched_.interrupted(j, "the worker running this job " + why);
      }
    }
    const pid_t proc_pid = proc_->pid();
    proc_.reset();
    if (retiring_) break;
    if (!handing_over_) sched_.count_worker_restart(restart_reason_.value_or(restart_reason::died));
    if (provisional_ && exited_on_its_own && !replied_) {
      // The client's fork did not take to being a worker: the slot's own process will.
      log::warn("adopted worker ", proc_pid, " ", why, " before it answered; its slot starts a worker of its own",
                lost.empty() ? "" : ", which takes its jobs");
    } else if (exited_on_its_own && !replied_ && steady_clock::now() - spawned < std::chrono::seconds(2)) {
      // A process that ends by itself soon after it started, having answered nothing, cannot run
      // the worker (an interpreter that was not probed, a broken install): retry, slowly.
      const auto backoff = std::chrono::milliseconds(100 << std::min(++consecutive_early_exits, 5));
      log::error("a worker ", why, " right after it started; starting another in ", backoff.count(), " ms");
      net::steady_timer t(ex_, backoff);
      co_await t.async_wait(use_nothrow_awaitable);
    } else {
      consecutive_early_exits = 0;
    }
  }
  pool_.on_slot_ended(*this);
}

void worker_slot::spawn_process() {
  if (opts_.cgroups != nullptr && !cgroup_) {
    static std::uint64_t cgroups_made = 0;
    cgroup_ = std::make_unique<worker_cgroup>(
        *opts_.cgroups, "ppgate-worker-" + std::to_string(::getpid()) + "-" + std::to_string(++cgroups_made),
        opts_.max_memory);
  }
  proc_ = std::make_unique<worker_process>(ex_, opts_.command);
  if (cgroup_ && !cgroup_->add(proc_->pid())) {
    const int err = errno;
    proc_.reset();
    throw std::system_error(err, std::generic_category(), "cannot move the worker into its memory cgroup");
  }
}

net::awaitable<void> worker_slot::serve() {
  accepting_ = true;
  ask_for_work();
  char buf[64 * 1024];
  auto& sock = proc_->socket();
  for (;;) {
    auto [ec, n] = co_await sock.async_read_some(net::buffer(buf), use_nothrow_awaitable);
    if (ec || !consume(buf, n)) co_return;  // EOF: the process exited or was killed
  }
}

bool worker_slot::consume(const char* data, std::size_t n) {
  try {
    reader_.feed(data, n);
    std::string_view frame;
    // Once the process is being replaced, what it still sent is stale.
    while (accepting_ && reader_.next(frame)) {
      replied_ = true;
      on_reply(frame);
    }
    return true;
  } catch (const std::exception& e) {
    log::error("worker ", proc_->pid(), " sent a bad frame: ", e.what());
    on_link_abuse();
    return false;
  }
}

void worker_slot::ask_for_work() {
  if (retiring_) {
    if (in_flight_.empty()) stop_process();
    return;
  }
  if (!accepting_) return;
  if (spent()) {  // its last jobs are in flight; once they are done, a fresh process
    if (in_flight_.empty()) replace_process(restart_reason::max_jobs);
    return;
  }
  if (in_flight_.empty()) {
    idle_ = true;
    sched_.slot_ready(*this);  // may call start() right away
    if (idle_ && provisional_ && process_jobs_ > 0) hand_over_when_idle();
  } else if (in_flight_.size() < max_in_flight_ && !stalled_) {
    const job* running = in_flight_.front().j;
    if (running != nullptr && (running->run_alone || !(running->spec.function->runs > 0 &&
                                running->spec.function->mean_run_seconds < max_run_seconds_to_wait_behind)))
      return;
    // What waits behind the running job may add up to the scheduler's budget, no more.
    double waiting = 0;
    for (std::size_t i = 1; i < in_flight_.size(); ++i)
      if (const job* j = in_flight_[i].j) waiting += j->spec.function->mean_run_seconds;
    const double budget = scheduler::prefetch_budget_seconds - waiting;
    if (budget > 0) sched_.slot_can_prefetch(*this, budget);  // may call start() right away
  }
}

void worker_slot::hand_over_when_idle() {
  // The adopted process got the first jobs going; with the queue empty now, a fresh interpreter
  // takes its place. It is started first, and the adopted process serves until it answers.
  if (successor_ready_) {
    log::debug("worker ", proc_->pid(), " (adopted) hands its slot over to fresh process ", successor_->pid());
  } else if (successor_failed_ || opts_.cgroups != nullptr) {
    log::debug("worker ", proc_->pid(), " (adopted) hands its slot over to a fresh process");
  } else {
    // Spawned after this turn of the event loop: the results it ended go out first (a spawn
    // holds the loop for a millisecond or so).
    net::post(ex_, [self = shared_from_this(), gen = generation_] {
      if (gen == self->generation_ && self->provisional_ && !self->retiring_) self->start_successor();
    });
    return;
  }
  handing_over_ = true;
  stop_process();
}

void worker_slot::start_successor() {
  if (successor_) return;  // under way
  try {
    successor_ = std::make_unique<worker_process>(ex_, opts_.command);
  } catch (const std::exception& e) {
    log::warn("cannot start the worker that would take adopted worker ", proc_->pid(), "'s place: ", e.what());
    successor_failed_ = true;
    return;
  }
  net::co_spawn(ex_, ready_successor(++successor_serial_), log::on_failure("worker successor"));
}

net::awaitable<void> worker_slot::ready_successor(std::uint64_t serial) {
  auto self = shared_from_this();
  // After each wait: the successor may have been dropped meanwhile (its socket with it).
  const auto dropped = [&] { return serial != successor_serial_ || !successor_; };
  std::string ping;
  append_worker_frame(ping, 1, "ping");
  auto [write_error, written] =
      co_await net::async_write(successor_->socket(), net::buffer(ping), use_nothrow_awaitable);
  (void)written;
  frame_reader answer;
  bool ready = false;
  char buf[256];
  for (boost::system::error_code ec = write_error; !ec && !dropped();) {
    std::size_t n = 0;
    std::tie(ec, n) = co_await successor_->socket().async_read_some(net::buffer(buf), use_nothrow_awaitable);
    if (ec || dropped()) break;
    std::string_view frame;
    try {
      answer.feed(buf, n);
      if (!answer.next(frame)) continue;
    } catch (const frame_error&) {
      break;
    }
    ready = frame == "1 pong";
    break;
  }
  if (dropped()) co_return;  // (the slot stopped, or spawned without it)
  if (!ready) {
    log::warn("worker ", successor_->pid(), ", started to take an adopted worker's place, did not answer; "
              "the slot starts another when it hands over");
    successor_.reset();
    successor_failed_ = true;
  } else {
    successor_ready_ = true;
  }
  if (accepting_ && idle_ && in_flight_.empty() && provisional_) hand_over_when_idle();
}

void worker_slot::send(std::string_view payload) {
  // Frames queued in one turn of the event loop go out together, in one write after it: a job
  // and the jobs placed behind it in the same turn reach the worker at once, so its loop reads
  // them all before the job runs and job code never sees them (docs/architecture.md). One write
  // at a time on the socket: frames wait in outbox_ while writing_ is in flight.
  append_worker_frame(outbox_, ++frames_sent_, payload);
  if (!writing_.empty() || flush_posted_) return;
  flush_posted_ = true;
  // Not tied to a process: outbox_ only ever holds frames for the current one (a new process
  // starts with it empty).
  net::post(ex_, [self = shared_from_this()] {
    self->flush_posted_ = false;
    if (self->proc_ && self->writing_.empty() && !self->outbox_.empty()) self->write_outbox();
  });
}

void worker_slot::write_outbox() {
  writing_.swap(outbox_);
  net::async_write(proc_->socket(), net::buffer(writing_),
                   [self = shared_from_this(), gen = generation_](boost::system::error_code ec, std::size_t) {
                     if (gen != self->generation_ || !self->proc_) return;  // an earlier process
                     if (ec) {
                       self->replace_process(restart_reason::died);
                       return;
                     }
                     self->writing_.clear();
                     if (!self->outbox_.empty()) self->write_outbox();
                   });
}

void worker_slot::start(job& j) {
  if (!accepting_) {
    // The scheduler forgets a slot before its process is replaced, so this is a bug; the job
    // must not be sent to a process that is going away.
    log::error("worker slot was given job ", j.id, " while replacing its process");
    sched_.requeue(j);
    return;
  }
  idle_ = false;
  ++process_jobs_;
  in_flight_.push_back({j.id, &j});
  // The function's definition goes to each process once; later jobs name it by its fn_id.
  const auto [known, first_time] =
      fn_ids_.try_emplace(j.spec.function->hash, static_cast<std::int64_t>(fn_ids_.size()) + 1);
  sources_sent_ += first_time;
  release_forgotten_values();
  std::string message;
  append_job_message(message, j,
                     {.fn_id = known->second, .with_definition = first_time, .with_shm = true,
                      .receiver_has = [this](const std::shared_ptr<const shared_value>& v) {
                        return !values_.try_emplace(v->key, v).second;
                      }});
  send(message);
  if (in_flight_.size() == 1)
    become_running(j, false);
  else
    arm_stall_check();
  ask_for_work();
}

void worker_slot::release_forgotten_values() {
  // A value nobody holds any more (its session released it, and no job that takes it is left):
  // the worker drops its copy before the next job ("release KEY ...").
  std::string note;
  std::erase_if(values_, [&](const auto& kv) {
    if (!kv.second.expired()) return false;
    note += note.empty() ? "release " : " ";
    note += std::to_string(kv.first);
    return true;
  });
  if (!note.empty()) send(note);
}

void worker_slot::become_running(job& j, bool was_waiting) {
  ++front_serial_;
  front_started_ = steady_clock::now();
  stalled_ = false;
  // A job that waited behind another starts now: its queue time includes that wait.
  if (was_waiting) j.started = front_started_;
  if (in_flight_.size() > 1) arm_stall_check();
  if (!j.spec.timeout) return;
  deadline_.expires_after(*j.spec.timeout);
  deadline_.async_wait([self = shared_from_this(), id = j.id](boost::system::error_code ec) {
    if (!ec) self->on_timeout(id);
  });
}

void worker_slot::on_reply(std::string_view frame) {
  const worker_reply reply = parse_worker_reply(frame);
  if (reply.probe_answer) {
    if (!probe_sent_) {  // nobody asked: job code wrote it
      log::error("worker ", proc_->pid(), " answered a probe nobody sent: it is replaced");
      on_link_abuse();
      return;
    }
    on_probe_answer(reply.taken_up);
    return;
  }
  if (reply.frames_taken) {
    // Frames we sent never reached the worker's loop: job code read them off the link. None of
    // the jobs still in flight has started; they go back to the queue, to a fresh process.
    log::error("worker ", proc_->pid(), " is replaced: its job ", reply.last_job,
               " read the worker's link (frames sent to it were taken)");
    stop_process_and_requeue_waiting(restart_reason::protocol);
    return;
  }
  const std::uint64_t received = reply.received;
  // "<id> ok|error|skipped <s>[ retire| retire-memory]"
  const auto& [id, word, seconds, outcome, retire, over_memory] = reply.end;
  const bool ok = word == "ok";
  if (in_flight_.empty() || in_flight_.front().id != id) {
    // Replies come in the order the jobs went out; anything else is job code writing to the link.
    log::error("worker ", proc_->pid(), " answered job ", id, " out of turn: it is replaced");
    const bool answered_twice =
        std::find(recently_finished_.begin(), recently_finished_.end(), id) != recently_finished_.end();
    if (answered_twice) {
      // A job that forged its own reply: the real one arrives after it, when the job behind it
      // has barely started. That one did not fail; it goes back to the queue.
      stop_process_and_requeue_waiting(restart_reason::protocol);
    } else {
      on_link_abuse();
    }
    return;
  }
  job* j = in_flight_.front().j;
  in_flight_.pop_front();
  deadline_.cancel();
  recently_finished_.push_back(id);
  if (recently_finished_.size() > 16) recently_finished_.pop_front();
  if (word == "skipped") --process_jobs_;  // it never ran here: it does not count
  if (j != nullptr && word == "skipped") {
    sched_.requeue(*j);  // taken back by a stall check, and the worker did skip it
  } else if (j != nullptr) {
    ++jobs_run_;
    if (ok) sched_.finish(*j, job_state::done, std::string(outcome), seconds);
    else sched_.failed(*j, std::string(outcome), seconds);
  }
  if (retire) {
    // What the job left behind would reach the next job: a fresh process takes the slot, and the
    // jobs waiting behind this one go back to the queue unstarted.
    if (over_memory)
      log::info("worker ", proc_->pid(), " is replaced: after job ", id, " it is over --max-worker-memory");
    else
      log::info("worker ", proc_->pid(), " is replaced: job ", id, " left threads, alarms, signal handlers or children");
    stop_process_and_requeue_waiting(over_memory ? restart_reason::memory : restart_reason::job_state);
    return;
  }
  if (!in_flight_.empty() && in_flight_.front().j != nullptr) become_running(*in_flight_.front().j, true);
  if (spent() && in_flight_.empty()) {
    // --max-jobs-per-worker (or --restart): nothing was placed behind its last job.
    log::debug("worker ", proc_->pid(), " ran its ", process_jobs_, " jobs; a fresh one takes the slot");
    replace_process(restart_reason::max_jobs);  // serve() sees EOF; supervise() starts a fresh process
    return;
  }
  // Frames written after the worker last read may still be on their way, or taken by the job
  // that just ended; a sync frame behind them makes the worker see a gap if they were taken.
  if (received < frames_sent_) send("sync");
  ask_for_work();
}

void worker_slot::on_link_abuse() {
  if (in_flight_.size() <= 1) {
    // The running job wrote it: supervise() reports that job as failed.
    replace_process(restart_reason::protocol);
    return;
  }
  // The worker may have held the front job's reply back and gone on to the jobs behind it
  // (worker_module.cpp, reply_writer): any of those in flight may have written, and which one is
  // not known. They go back to the queue, no attempt spent, each to run alone next time: then the
  // one that writes to the link again is the running job, and fails.
  for (const in_flight& f : in_flight_)
    if (f.j != nullptr) f.j->run_alone = true;
  stop_process_and_requeue_waiting(restart_reason::protocol);
}

void worker_slot::arm_stall_check() {
  if (stall_armed_ || in_flight_.size() < 2 || in_flight_.front().j == nullptr) return;
  stall_armed_ = true;
  stall_timer_.expires_at(front_started_ + stall_limit(*in_flight_.front().j->spec.function));
  stall_timer_.async_wait([self = shared_from_this(), gen = generation_, serial = front_serial_](
                              boost::system::error_code ec) {
    if (ec || gen != self->generation_) return;
    self->stall_armed_ = false;
    self->on_stall_check(serial);
  });
}

void worker_slot::on_stall_check(std::uint64_t serial) {
  if (!accepting_ || in_flight_.size() < 2) return;
  if (serial != front_serial_) {
    arm_stall_check();  // the job that was running has ended; time the one running now
    return;
  }
  // The running job is overdue: what waits behind it may run elsewhere, and nothing more is
  // placed behind it until it ends.
  stalled_ = true;
  sched_.slot_gone(*this);
  take_back_waiting();
}

void worker_slot::take_back_waiting() {
  if (!writing_.empty() || !outbox_.empty()) {
    // Frames are on their way: the notes must reach the socket now, behind them. Try again shortly.
    stall_timer_.expires_after(std::chrono::milliseconds(1));
    stall_armed_ = true;
    stall_timer_.async_wait([self = shared_from_this(), gen = generation_](boost::system::error_code ec) {
      if (ec || gen != self->generation_) return;
      self->stall_armed_ = false;
      if (self->stalled_ && self->accepting_) self->take_back_waiting();
    });
    return;
  }
  std::string notes;
  std::vector<std::size_t> taken;
  for (std::size_t i = 1; i < in_flight_.size(); ++i) {
    in_flight& f = in_flight_[i];
    if (f.j == nullptr || f.skip_sent) continue;
    f.skip_sent = true;
    taken.push_back(i);
    append_worker_frame(notes, ++frames_sent_, "skip " + std::to_string(f.id));
  }
  if (taken.empty()) return;
  // Written here and now, not queued: the certainty below rests on the notes being in the
  // worker's socket before we look for its reply.
  const int fd = proc_->socket().native_handle();
  ssize_t n;
  do {
    n = ::send(fd, notes.data(), notes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  const std::size_t written = n > 0 ? static_cast<std::size_t>(n) : 0;
  if (written < notes.size()) {
    outbox_.assign(notes, written);
    write_outbox();
    return;  // uncertain: the worker's replies will say which jobs it skipped
  }
  if (may_hold_front_reply()) {
    // The running job may have ended, its reply held back, and the worker gone on to a job named
    // here. It says which job it took up last: it reads its link before each later one, and so
    // skips those.
    probe([this](std::optional<std::uint64_t> taken_up) {
      if (taken_up) requeue_skipped_after(*taken_up);  // else its replies will say what it skipped
    });
    return;
  }
  // The worker writes a job's reply before it reads again, and it reads everything that has
  // arrived before it starts a job. So if no byte of a reply has come since the notes went into
  // its socket, it is still on the running job and will skip every job named.
  int unread = 0;
  if (::ioctl(fd, FIONREAD, &unread) != 0 || unread != 0 || reader_.buffered() != 0) return;
  requeue_skipped_after(in_flight_.front().id);
}

void worker_slot::requeue_skipped_after(std::uint64_t taken_up) {
  std::size_t first = 0;  // the jobs from here on that the worker was told to skip
  for (std::size_t i = 0; i < in_flight_.size(); ++i)
    if (in_flight_[i].id == taken_up) first = i + 1;
  std::vector<job*> requeue;
  for (std::size_t i = first; i < in_flight_.size(); ++i) {
    in_flight& f = in_flight_[i];
    if (f.j == nullptr || !f.skip_sent) continue;
    requeue.push_back(f.j);
    f.j = nullptr;  // its "skipped" reply will be ignored
  }
  if (requeue.empty()) return;
  log::debug("worker ", proc_->pid(), ": job ", in_flight_.front().id, " is overdue; ", requeue.size(),
             " jobs waiting behind it go back to the queue");
  for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) sched_.requeue(**it);
}

bool worker_slot::may_hold_front_reply() const {
  return opts_.max_memory == 0 && in_flight_.size() > jobs_waiting_to_hold_a_reply;
}

void worker_slot::probe(probe_callback then) {
  if (probe_sent_) {
    // One signal answered at a time: this one must be sent after what the caller just wrote.
    probe_next_.push_back(std::move(then));
  } else {
    probe_waiters_.push_back(std::move(then));
    probe_sent_ = true;
    // To the worker's main thread, which runs the loop (the threads of a job's libraries must
    // not take it).
    if (::tgkill(static_cast<pid_t>(proc_->pid()), static_cast<pid_t>(proc_->pid()), worker_probe_signal()) != 0)
      log::debug("cannot probe worker ", proc_->pid(), ": ", std::strerror(errno));  // it is gone: EOF follows
  }
  if (probe_fallback_armed_) return;
  // A worker that does not answer (a job blocked the signal, the process is stopped) leaves its
  // callers to act without the answer.
  probe_fallback_armed_ = true;
  probe_timer_.expires_after(max_probe_wait);
  probe_timer_.async_wait([self = shared_from_this(), gen = generation_](boost::system::error_code ec) {
    if (ec || gen != self->generation_) return;
    self->probe_fallback_armed_ = false;
    auto waiters = std::move(self->probe_waiters_);
    self->probe_waiters_.clear();
    auto next = std::move(self->probe_next_);
    self->probe_next_.clear();
    for (auto* callbacks : {&waiters, &next})
      for (auto& then : *callbacks) {
        if (gen != self->generation_ || !self->accepting_) return;  // one of them replaced the process
        then(std::nullopt);
      }
  });
}

void worker_slot::on_probe_answer(std::uint64_t taken_up) {
  auto waiters = std::move(probe_waiters_);
  probe_waiters_.clear();
  probe_sent_ = false;
  probe_fallback_armed_ = false;
  probe_timer_.cancel();
  if (!probe_next_.empty()) {
    auto next = std::move(probe_next_);
    probe_next_.clear();
    for (auto& then : next) probe(std::move(then));
  }
  const auto gen = generation_;
  for (auto& then : waiters) {
    if (gen != generation_ || !accepting_) return;  // one of them replaced the process
    then(taken_up);
  }
}

void worker_slot::leave_scheduler() {
  accepting_ = false;
  idle_ = false;
  sched_.slot_gone(*this);
}

void worker_slot::replace_process(restart_reason why) {
  if (!restart_reason_) restart_reason_ = why;
  stop_process();
}

void worker_slot::stop_process() {
  // Leave the scheduler before anything can be requeued: a job handed to this slot now would be
  // written to a process that is about to die. supervise() offers the slot again once a fresh
  // process serves.
  leave_scheduler();
  deadline_.cancel();
  stall_timer_.cancel();
  if (proc_) proc_->kill();
}

std::string worker_slot::memory_kill_outcome() const {
  return error_outcome("WorkerMemoryError",
                       "the job's worker went over --max-worker-memory (" + std::to_string(opts_.max_memory) +
                           " bytes) and the kernel stopped it; a fresh worker takes its place");
}

void worker_slot::stop_process_and_requeue_waiting(restart_reason why) {
  // The running job has been dealt with by the caller; the ones behind it never started, so they
  // go back to the queue (to another slot, or to this one's next process) with no attempt spent.
  replace_process(why);
  std::deque<in_flight> waiting;
  waiting.swap(in_flight_);
  for (auto it = waiting.rbegin(); it != waiting.rend(); ++it)
    if (it->j != nullptr) sched_.requeue(*it->j);
}

void worker_slot::on_timeout(std::uint64_t job_id, bool asked) {
  if (in_flight_.empty() || in_flight_.front().id != job_id || in_flight_.front().j == nullptr) return;
  if (!asked && may_hold_front_reply()) {
    // It may have ended in time, its reply held back: the worker says.
    probe([this, job_id](std::optional<std::uint64_t>) { on_timeout(job_id, true); });
    return;
  }
  job& j = *in_flight_.front().j;
  in_flight_.pop_front();
  stop_process_and_requeue_waiting(restart_reason::timeout);
  const double ran = std::chrono::duration<double>(steady_clock::now() - j.started).count();
  const double limit = std::chrono::duration<double>(*j.spec.timeout).count();
  sched_.failed(j,
                error_outcome("TimeoutError", "the job ran longer than its timeout of " +
                                                  python_float_repr(limit) +
                                                  " s; its worker was stopped and replaced"),
                ran);
}

void worker_slot::abort(job& j) {
  if (!in_flight_.empty() && in_flight_.front().j == &j) {
    // It is running: only stopping the process stops it.
    deadline_.cancel();
    if (may_hold_front_reply()) {
      // Unless it has ended, its reply held back: the worker says, and is stopped only if not.
      in_flight_.front().j = nullptr;  // its reply, if it comes, is ignored
      probe([this, id = j.id](std::optional<std::uint64_t>) {
        if (!in_flight_.empty() && in_flight_.front().id == id) stop_process_and_requeue_waiting(restart_reason::cancelled);
      });
      return;
    }
    in_flight_.pop_front();
    stop_process_and_requeue_waiting(restart_reason::cancelled);
    return;
  }
  for (auto& f : in_flight_) {
    if (f.j == &j) {
      // Waiting behind the running job: the worker skips it when it gets there.
      f.j = nullptr;
      send("skip " + std::to_string(j.id));
      return;
    }
  }
}

void worker_slot::retire() {
  retiring_ = true;
  drop_successor();
  // Neither idle nor offering to prefetch any more; the running job (and those behind it) finish.
  idle_ = false;
  sched_.slot_gone(*this);
  if (in_flight_.empty()) stop_process();
}

void worker_slot::stop_now() {
  retiring_ = true;
  drop_successor();
  leave_scheduler();
  deadline_.cancel();
  if (proc_) proc_->kill_and_reap();
}

void worker_slot::drop_successor() {
  ++successor_serial_;  // its readiness check, if any, ends without touching the slot
  successor_.reset();   // killed and reaped
  successor_ready_ = false;
}

std::string_view to_string(worker_state s) {
  switch (s) {
    case worker_state::starting: return "starting";
    case worker_state::idle: return "idle";
    case worker_state::busy: return "busy";
    case worker_state::stopping: return "stopping";
  }
  return "unknown";
}

worker_info worker_slot::info() const {
  worker_info w;
  w.pid = proc_ ? proc_->pid() : 0;
  const job* running = in_flight_.empty() ? nullptr : in_flight_.front().j;
  w.job = running ? running->id : 0;
  w.jobs_run = jobs_run_;
  w.sources_sent = sources_sent_;
  w.state = retiring_            ? worker_state::stopping
            : !in_flight_.empty() ? worker_state::busy
            : idle_               ? worker_state::idle
                                  : worker_state::starting;
  return w;
}

}  // namespace ppgate
