// This node's part in a cluster (docs/peers.md): the peer port where other nodes send it jobs
// (peer_server, the ppserver role), the nodes it dials and runs jobs on (peer_node, the
// ppservers role), and discovery of more of them on the local network.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "discovery.hpp"
#include "peer_node.hpp"
#include "peer_server.hpp"
#include "peer_settings.hpp"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ppgate {

class peers {
 public:
  // `settings` is borrowed and must outlive this object; its `name` is set here when the peer
  // port is asked for port 0.
  peers(net::any_io_executor ex, scheduler& sched, local_pool& pool, peers_options opts,
        peer_settings& settings);

  // Opens the peer port, dials the configured peers and starts discovery. Throws when the port
  // cannot be bound.
  void start();
  void stop();

  void capacity_changed();  // the local pool was resized: tell the nodes using it
  bool listening() const { return server_ != nullptr; }
  std::uint16_t port() const { return server_ ? server_->port() : 0; }
  const std::vector<std::shared_ptr<peer_node>>& dialed() const { return dialed_; }
  std::size_t dialed_slots() const;

 private:
  void dial(const std::string& host, std::uint16_t port);

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  peers_options opts_;
  peer_settings& settings_;
  std::unique_ptr<peer_server> server_;
  std::vector<std::shared_ptr<peer_node>> dialed_;
  std::unique_ptr<discovery> discovery_;
};

}  // namespace ppgate
