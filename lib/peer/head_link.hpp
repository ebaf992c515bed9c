// This node's link to a head it joins (ppgate serve --join HOST:PORT, docs/clusters.md): it
// dials the head's peer port, authenticates as any peer does, offers this node's workers, and
// runs the jobs the head sends, as it would for a peer that dialed it (serving_channel). When the
// link is lost it redials with backoff, so a head that restarts gets its joined nodes back.
// Owned through shared_ptr. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "local_pool.hpp"
#include "peer_settings.hpp"
#include "scheduler.hpp"

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <optional>
#include <string>

namespace ppgate {

class head_link : public std::enable_shared_from_this<head_link> {
 public:
  head_link(net::any_io_executor ex, scheduler& sched, local_pool& pool, std::string host, std::uint16_t port,
            const peer_settings& settings);

  void launch();
  void stop();
  void capacity_changed();  // the local pool was resized: tell the head
  // This node is draining: the head gets back the jobs that had not started and is told this
  // node has no slots; the link stays up for the running ones' results, and is not dialed again.
  std::size_t drain(std::string_view why);
  const std::string& head() const { return head_name_; }
  bool connected() const { return channel_ != nullptr; }
  const std::string& last_error() const { return last_error_; }

 private:
  class channel;
  net::awaitable<void> supervise();
  // Dials and authenticates; returns the channel, or null with last_error_ set.
  net::awaitable<std::shared_ptr<channel>> connect(bool& refused);

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  std::string host_;
  std::uint16_t port_;
  std::string head_name_;  // host:port
  const peer_settings& settings_;
  std::shared_ptr<net::ssl::context> tls_;
  std::shared_ptr<channel> channel_;
  std::string last_error_;
  bool stopped_ = false;
  bool linked_before_ = false;  // a link came up before: the next one is a reconnect
  std::optional<net::steady_timer> backoff_;
};

}  // namespace ppgate
