#include "head_link.hpp"

#include "log.hpp"
#include "peer_stream.hpp"
#include "serving_channel.hpp"

#include <utility>

namespace ppgate {

// The joining side of a link: the dialer's handshake offering to join, then its own welcome
// (this node's slots and Python), then the head's jobs.
class head_link::channel : public serving_channel {
 public:
  channel(std::unique_ptr<peer_stream> s, const peer_settings& settings, scheduler& sched, std::string head)
      : serving_channel(std::move(s), settings, sched) {
    peer_name_ = std::move(head);
  }

  net::awaitable<bool> join(const local_pool& pool, std::string& why, bool& refused) {
    // Stored first: `if (!co_await ...)` on an optional result crashed (SIGILL) under g++ 12.
    const auto head_welcome = co_await dial_handshake(/*join=*/true, why, refused);
    if (!head_welcome) co_return false;
    send(peer::msg::welcome, std::to_string(pool.size()) + " " + pool.python_version() + " " + settings_.name);
    if (!co_await flush()) {
      why = "the connection closed during the handshake";
      co_return false;
    }
    co_return true;
  }

  net::awaitable<void> serve() { co_await serve_jobs(); }
};

head_link::head_link(net::any_io_executor ex, scheduler& sched, local_pool& pool, std::string host,
                     std::uint16_t port, const peer_settings& settings)
    : ex_(ex),
      sched_(sched),
      pool_(pool),
      host_(std::move(host)),
      port_(port),
      head_name_(host_ + ":" + std::to_string(port_)),
      settings_(settings) {
  if (settings_.tls.enabled()) tls_ = make_tls_context(settings_.tls, /*server=*/false);
}

void head_link::launch() {
  backoff_.emplace(ex_);
  net::co_spawn(ex_, [self = shared_from_this()]() { return self->supervise(); }, log::on_failure("head link"));
}

void head_link::stop() {
  stopped_ = true;
  if (backoff_) backoff_->cancel();
  if (channel_) channel_->close();
}

std::size_t head_link::drain(std::string_view why) {
  stopped_ = true;
  if (backoff_) backoff_->cancel();
  return channel_ ? channel_->drain(why) : 0;
}

void head_link::capacity_changed() {
  if (channel_) channel_->capacity_changed(pool_.size());
}

net::awaitable<std::shared_ptr<head_link::channel>> head_link::connect(bool& refused) {
  auto stream = co_await dial_peer(ex_, host_, port_, tls_.get(), last_error_);
  if (!stream) co_return nullptr;
  auto c = std::make_shared<channel>(std::move(stream), settings_, sched_, head_name_);
  std::string why;
  if (!co_await c->join(pool_, why, refused)) {
    last_error_ = why;
    c->close();
    co_return nullptr;
  }
  co_return c;
}

net::awaitable<void> head_link::supervise() {
  auto self = shared_from_this();
  auto delay = std::chrono::milliseconds(250);
  while (!stopped_) {
    bool refused = false;
    auto c = co_await connect(refused);
    if (c && !stopped_) {
      log::info("joined head ", head_name_, " with ", pool_.size(), " workers");
      ++settings_.counters.established;
      if (std::exchange(linked_before_, true)) ++settings_.counters.reconnects;
      last_error_.clear();
      delay = std::chrono::milliseconds(250);
      channel_ = c;
      co_await c->serve();
      channel_.reset();
      if (stopped_) break;
      last_error_ = "the link was lost";
      log::warn("the link to head ", head_name_, " was lost; joining again");
      continue;  // redial at once; failures from here on back off
    }
    if (stopped_) break;
    // A refusal (wrong secret, wrong version) will not fix itself soon: retry rarely.
    const auto wait = refused ? std::chrono::milliseconds(30000) : delay;
    log::warn("head ", head_name_, ": ", last_error_, "; retrying in ", wait.count(), " ms");
    delay = std::min(delay * 2, std::chrono::milliseconds(10000));
    backoff_->expires_after(wait);
    co_await backoff_->async_wait(use_nothrow_awaitable);
  }
}

}  // namespace ppgate
