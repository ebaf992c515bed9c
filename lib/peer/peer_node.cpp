#include "peer_node.hpp"

#include "shared_memory.hpp"

#include "job_message.hpp"
#include "log.hpp"

#include <utility>
#include <boost/asio/ip/tcp.hpp>

#include <charconv>

namespace ppgate {

// A slot of the peer: holds one job in flight at a time.
class peer_node::remote_slot : public slot {
 public:
  remote_slot(peer_node& owner, bool short_jobs_only) : short_jobs_only(short_jobs_only), node_(owner) {}
  node& owner() override { return node_; }
  void start(job& j) override {
    job_ = &j;
    node_.send_job(j, *this);
  }
  void abort(job& j) override {
    node_.cancel_job(j);
    job_ = nullptr;
    if (!retiring) ask_for_work();
  }
  void ask_for_work() {
    if (short_jobs_only)
      node_.sched_.slot_can_prefetch(*this, scheduler::prefetch_budget_seconds);
    else
      node_.sched_.slot_ready(*this);
  }
  job* job_ = nullptr;
  bool retiring = false;
  const bool short_jobs_only;

 private:
  peer_node& node_;
};

// The dialer's side of an authenticated connection.
class peer_node::channel : public peer_channel {
 public:
  channel(std::unique_ptr<peer_stream> s, const peer_settings& settings, peer_node& owner)
      : peer_channel(std::move(s), settings), node_(owner) {
    peer_name_ = owner.name_;
  }
  // The link of a joining node, authenticated by this node's peer port.
  channel(peer_channel& authenticated, peer_node& owner) : peer_channel(authenticated), node_(owner) {
    peer_name_ = owner.name_;
  }

  // A joining node's welcome, the first message after the handshake: its slots and Python.
  net::awaitable<std::optional<peer::welcome>> joined_welcome() {
    std::string storage;
    auto welcome = co_await receive(storage);
    if (!welcome || welcome->type != peer::msg::welcome) co_return std::nullopt;
    co_return peer::parse_welcome(welcome->payload);
  }

  // The dialer's half of the handshake: the peer's slots, or nothing with `why` set.
  net::awaitable<std::size_t> handshake(std::string& why, bool& refused) {
    const auto w = co_await dial_handshake(/*join=*/false, why, refused);
    if (!w) co_return 0;
    node_.python_version_ = w->python;
    co_return w->slots;  // 0 is a valid, if idle, peer
  }

  net::awaitable<void> serve() { co_await run(); }

 private:
  void on_message(const peer::message& m) override {
    switch (m.type) {
      case peer::msg::result: node_.on_result(m.payload); break;
      case peer::msg::result_attached:
        if (!node_.on_result_attached(m.payload)) {
          log::warn("peer ", peer_name_, " sent a malformed result; dropping the link");
          close();  // its jobs go back to the queue
        }
        break;
      case peer::msg::capacity: {
        std::size_t slots = 0;
        std::from_chars(m.payload.data(), m.payload.data() + m.payload.size(), slots);
        node_.set_capacity(slots);
        break;
      }
      default: log::warn("peer ", peer_name_, " sent an unexpected message"); break;
    }
  }

  peer_node& node_;
};

peer_node::peer_node(net::any_io_executor ex, scheduler& sched, std::string host, std::uint16_t port,
                     const peer_settings& settings, std::size_t inflight_per_slot)
    : ex_(ex),
      sched_(sched),
      host_(std::move(host)),
      port_(port),
      name_(host_ + ":" + std::to_string(port_)),
      settings_(settings),
      inflight_per_slot_(std::max<std::size_t>(1, inflight_per_slot)) {
  if (settings_.tls.enabled()) tls_ = make_tls_context(settings_.tls, /*server=*/false);
  sched_.register_node(*this);
}

peer_node::peer_node(joined_node, net::any_io_executor ex, scheduler& sched, std::string name,
                     const peer_settings& settings, std::size_t inflight_per_slot)
    : ex_(ex),
      sched_(sched),
      port_(0),
      name_(std::move(name)),
      settings_(settings),
      inflight_per_slot_(std::max<std::size_t>(1, inflight_per_slot)),
      joined_(true) {
  sched_.register_node(*this);
}

// The supervising coroutine takes the slots out of the scheduler before it ends; a node outlives
// the scheduler only when the io_context is torn down, and must not touch it then.
peer_node::~peer_node() = default;

void peer_node::launch() {
  backoff_.emplace(ex_);
  net::co_spawn(ex_, [self = shared_from_this()]() { return self->supervise(); },
                log::on_failure("peer link"));
}

void peer_node::adopt(peer_channel& authenticated) {
  auto c = std::make_shared<channel>(authenticated, *this);
  net::co_spawn(ex_, [self = shared_from_this(), c]() { return self->serve_joined(c); },
                log::on_failure("joined node"));
}

net::awaitable<void> peer_node::serve_joined(std::shared_ptr<channel> c) {
  const auto welcome = co_await c->joined_welcome();
  if (!welcome || stopped_) {
    if (!welcome) log::warn("node ", name_, " joined but sent no welcome; closing its link");
    c->close();
    co_return;
  }
  if (channel_) {
    // The node joined again (it restarted, or lost a link this side has not noticed yet): the
    // old link's jobs go back to the queue.
    log::info("node ", name_, " joined again; dropping its old link");
    std::exchange(channel_, nullptr)->close();
    link_lost("it joined again");
  }
  python_version_ = welcome->python;
  link_up(c, welcome->slots);
  log::info("node ", name_, " joined with ", remote_slots_, " slots");
  co_await c->serve();
  if (channel_ == c) {
    channel_.reset();
    last_error_ = stopped_ ? "the node is stopping" : "the link was lost";
    log::info("joined node ", name_, " left");
    link_lost(last_error_);
  }
}

void peer_node::link_up(std::shared_ptr<channel> c, std::size_t slots) {
  if (std::exchange(linked_before_, true)) ++settings_.counters.reconnects;
  last_error_.clear();
  pending_runs_.clear();  // meant for a link that is gone
  pending_ids_.clear();
  batched_.clear();
  alone_.clear();
  channel_ = std::move(c);
  // What the other side knows of this link starts anew.
  fn_ids_.clear();
  defining_.clear();
  refs_sent_.clear();
  defining_refs_.clear();
  set_capacity(slots);
}

void peer_node::stop() {
  stopped_ = true;
  if (backoff_) backoff_->cancel();
  if (channel_) channel_->close();
}

net::awaitable<std::shared_ptr<peer_node::channel>> peer_node::connect(bool& refused) {
  auto stream = co_await dial_peer(ex_, host_, port_, tls_.get(), last_error_);
  if (!stream) co_return nullptr;
  auto c = std::make_shared<channel>(std::move(stream), settings_, *this);
  std::string why;
  const std::size_t slots = co_await c->handshake(why, refused);
  if (!why.empty()) {
    last_error_ = why;
    c->close();
    co_return nullptr;
  }
  remote_slots_ = slots;
  co_return c;
}

net::awaitable<void> peer_node::supervise() {
  auto self = shared_from_this();
  auto delay = std::chrono::milliseconds(250);
  while (!stopped_) {
    bool refused = false;
    auto c = co_await connect(refused);
    if (c && !stopped_) {
      log::info("peer ", name_, " connected with ", remote_slots_, " slots");
      ++settings_.counters.established;  // (a joined node's link is counted by peer_server)
      delay = std::chrono::milliseconds(250);
      link_up(c, remote_slots_);
      co_await c->serve();
      channel_.reset();
      link_lost(last_error_.empty() ? "the link was lost" : last_error_);
      continue;  // redial at once; failures from here on back off
    }
    if (stopped_) break;
    // A refusal (wrong secret, wrong version) will not fix itself soon: retry rarely, so a
    // misconfigured node does not storm its peer.
    const auto wait = refused ? std::chrono::milliseconds(30000) : delay;
    log::warn("peer ", name_, ": ", last_error_, "; retrying in ", wait.count(), " ms");
    delay = std::min(delay * 2, std::chrono::milliseconds(10000));
    backoff_->expires_after(wait);
    co_await backoff_->async_wait(use_nothrow_awaitable);
  }
  link_lost("the node is stopping");
}

void peer_node::set_capacity(std::size_t remote_slots) {
  remote_slots_ = remote_slots;
  // Per remote slot: one slot for any job, and inflight_per_slot - 1 for short jobs only.
  const std::size_t wanted_any = channel_ ? remote_slots : 0;
  const std::size_t wanted_short = channel_ ? remote_slots * (inflight_per_slot_ - 1) : 0;
  for (const bool short_only : {false, true}) {
    const std::size_t wanted = short_only ? wanted_short : wanted_any;
    std::size_t active = 0;
    for (auto& s : slots_) active += !s->retiring && s->short_jobs_only == short_only;
    for (auto& s : slots_) {  // a retiring slot comes back before a new one is made
      if (active >= wanted) break;
      if (s->retiring && s->short_jobs_only == short_only) {
        s->retiring = false;
        ++active;
        if (s->job_ == nullptr) s->ask_for_work();
      }
    }
    for (; active < wanted; ++active) {
      slots_.push_back(std::make_unique<remote_slot>(*this, short_only));
      slots_.back()->ask_for_work();
    }
    for (auto it = slots_.begin(); active > wanted && it != slots_.end();) {
      auto& s = *it;
      if (s->retiring || s->short_jobs_only != short_only) {
        ++it;
        continue;
      }
      --active;
      sched_.slot_gone(*s);
      if (s->job_ == nullptr) {
        it = slots_.erase(it);
      } else {
        s->retiring = true;  // leaves after its job
        ++it;
      }
    }
  }
}

void peer_node::send_job(job& j, remote_slot& s) {
  if (!channel_) {
    // The link went down between the slot's offer and this job: give the job back untouched.
    s.job_ = nullptr;
    sched_.requeue(j);
    return;
  }
  running_[j.id] = &s;
  const function_def& f = *j.spec.function;
  auto [known, first_time] = fn_ids_.try_emplace(f.hash, next_fn_id_);
  if (first_time) {  // the function's source crosses the link once
    ++next_fn_id_;
    defining_[j.id] = f.hash;
  }
  std::string message;
  std::string attachments;  // its arguments in shared memory, as bytes after the batch
  try {
    append_job_message(message, j,
                       {.fn_id = known->second, .with_definition = first_time, .with_options = true,
                        .inline_shared_memory = true, .attachments = &attachments, .receiver_has = [&](const std::shared_ptr<const shared_value>& v) {
                          if (!refs_sent_.insert(v->key).second) return true;
                          defining_refs_[j.id].push_back(v->key);
                          return false;
                        }});
  } catch (const shared_memory::error& e) {
    // Its arguments are gone (its client removed them, or left).
    fail_unsent(j, first_time, "SharedMemoryError", e.what());
    return;
  }
  const std::size_t size = message.size() + 2 + (attachments.empty() ? 0 : 4 + attachments.size());
  if (size > max_run_frame) {
    fail_unsent(j, first_time, "MessageTooLarge",
                "the job's message to node " + name_ + " would take " + std::to_string(size) +
                    " bytes, over the limit of a peer frame, " + std::to_string(max_run_frame) + " bytes");
    return;
  }
  if (attachments.empty() && alone_.erase(j.id) == 0) {
    queue_run(j.id, message);
  } else if (attachments.empty()) {
    // Refused in a frame with other jobs: alone, so one job's refusal is its own.
    flush_runs();
    channel_->send(peer::msg::run, "[" + message + "]");
  } else {
    // A binary message (shared_memory.hpp): the batch, then the bytes its pickles are parts of.
    flush_runs();
    std::string batch = "[" + message + "]";
    std::string frame = shared_memory::binary_message_length(batch.size());
    frame.reserve(4 + batch.size() + attachments.size());
    frame += batch;
    frame += attachments;
    channel_->send(peer::msg::run_attached, frame);
  }
}

void peer_node::queue_run(std::uint64_t job_id, std::string_view message) {
  // The jobs the scheduler hands this node in one turn of the event loop go in one run frame:
  // one message to authenticate and parse on each side, not one per job.
  if (pending_runs_.size() + message.size() + 2 > max_run_frame) flush_runs();
  pending_runs_ += pending_runs_.empty() ? '[' : ',';
  pending_runs_ += message;
  pending_ids_.push_back(job_id);
  if (!flush_posted_) {
    flush_posted_ = true;
    net::post(ex_, [weak = weak_from_this()] {
      if (auto self = weak.lock()) {
        self->flush_posted_ = false;
        self->flush_runs();
      }
    });
  }
}

void peer_node::flush_runs() {
  if (pending_runs_.empty()) return;
  pending_runs_ += ']';
  if (channel_) channel_->send(peer::msg::run, pending_runs_);
  pending_runs_.clear();  // without a link its jobs were requeued already (link_lost)
  if (pending_ids_.size() > 1) batched_.insert(pending_ids_.begin(), pending_ids_.end());
  pending_ids_.clear();
}

void peer_node::forget_refs_defined_by(std::uint64_t job_id) {
  if (auto d = defining_refs_.find(job_id); d != defining_refs_.end()) {
    for (const auto key : d->second) refs_sent_.erase(key);
    defining_refs_.erase(d);
  }
}

void peer_node::fail_unsent(job& j, bool was_defining, std::string_view type, std::string_view why) {
  // The job ends as if the peer had answered, once this call (the scheduler's start()) is over;
  // its function's definition did not cross the link.
  if (was_defining) {
    fn_ids_.erase(j.spec.function->hash);
    defining_.erase(j.id);
  }
  forget_refs_defined_by(j.id);
  std::string failure = std::to_string(j.id) + " failed 0\n" + error_outcome(type, why);
  net::post(ex_, [weak = weak_from_this(), failure = std::move(failure)] {
    if (auto self = weak.lock()) self->on_result(failure);
  });
}

void peer_node::cancel_job(job& j) {
  running_.erase(j.id);
  batched_.erase(j.id);
  alone_.erase(j.id);
  flush_runs();  // the job's run goes first
  if (channel_) channel_->send(peer::msg::cancel, std::to_string(j.id));
}

void peer_node::on_result(std::string_view payload) {
  const auto [tag, state, seconds, outcome, retire, over_memory] = parse_reported_end(payload);  // "<tag> <state> <s>"

  // A refused (or handed back) message that defined a function or a value: the peer did not
  // keep it, so the next job that needs it carries it again.
  const bool not_kept = state == peer::refused_result || state == peer::handed_back_result;
  if (auto d = defining_.find(tag); d != defining_.end()) {
    if (not_kept) fn_ids_.erase(d->second);
    defining_.erase(d);
  }
  if (not_kept) forget_refs_defined_by(tag);
  else defining_refs_.erase(tag);
  const bool was_batched = batched_.erase(tag) > 0;
  auto it = running_.find(tag);
  if (it == running_.end()) return;  // cancelled here meanwhile
  remote_slot& s = *it->second;
  running_.erase(it);
  job* j = s.job_;
  s.job_ = nullptr;
  if (j != nullptr) {
    if (state == peer::refused_result && was_batched) {
      // Its frame held other jobs, and one of them may be what the peer refused: it goes again,
      // alone (never having run there).
      log::debug("job ", j->id, " was refused by ", name_, " with others; sending it alone");
      alone_.insert(j->id);
      sched_.requeue(*j);
    } else if (state == peer::handed_back_result) {  // the peer is draining: it never ran the job
      log::debug("job ", j->id, " was handed back by ", name_, "; it runs elsewhere");
      sched_.requeue(*j);
    } else if (state == "done" || state == "failed" || state == peer::refused_result)
      sched_.finish(*j, state == "done" ? job_state::done : job_state::failed, std::string(outcome), seconds);
    else  // the peer gave it up without being asked (it is stopping): run it elsewhere
      sched_.interrupted(*j, "node " + name_ + " gave the job up (" + std::string(state) + ")", true);
  }
  if (s.retiring) {
    std::erase_if(slots_, [&](auto& p) { return p.get() == &s; });
    return;
  }
  s.ask_for_work();
}

bool peer_node::on_result_attached(std::string_view payload) {
  // [length][the result's text, its pickle {"attached": true, "parts": ...}][attachments]: the
  // bytes go to the file the job's session takes a big result from, as its worker would have
  // written it here, and the result names that file.
  shared_memory::binary_message message;
  reported_end end;
  try {
    message = shared_memory::split_binary_message(payload);
    end = parse_reported_end(message.json);
  } catch (const std::exception&) {
    return false;
  }
  const auto head = message.json.substr(0, message.json.find('\n') + 1);
  const auto it = running_.find(end.id);
  const job* j = it != running_.end() ? it->second->job_ : nullptr;
  if (j == nullptr) {
    on_result(message.json);  // cancelled here meanwhile: nothing to keep
    return true;
  }
  std::string text;
  try {
    if (j->spec.shm_prefix.empty()) throw shared_memory::error("its session takes no result in parts");
    text = std::string(head) + shared_memory::result_to_file(end.outcome, message.attachments,
                                                             j->spec.shm_prefix + "r" + std::to_string(j->id));
  } catch (const shared_memory::error& e) {
    text = std::to_string(end.id) + " failed 0\n" +
           error_outcome("SharedMemoryError", std::string("the result from node ") + name_ + " was lost: " + e.what());
  }
  on_result(text);
  return true;
}

void peer_node::link_lost(const std::string& why) {
  // Every job in flight goes back to the queue (or ends lost when it has been lost too often);
  // the peer's slots leave the scheduler until the link is back.
  pending_runs_.clear();
  pending_ids_.clear();
  batched_.clear();
  alone_.clear();
  std::vector<std::unique_ptr<remote_slot>> old;
  old.swap(slots_);
  running_.clear();
  remote_slots_ = 0;
  for (auto& s : old) {
    sched_.slot_gone(*s);
    if (job* j = s->job_) {
      s->job_ = nullptr;
      log::warn("job ", j->id, " was in flight on ", name_, ", which was lost: ", why);
      sched_.interrupted(*j, "the job was on node " + name_ + ", which was lost (" + why + ")", true);
    }
  }
}

}  // namespace ppgate
