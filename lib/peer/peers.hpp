// This node's part in a cluster (docs/peers.md, docs/clusters.md): the peer port where other
// nodes send it jobs (peer_server, the ppserver role) and where nodes join it, the nodes it dials
// and runs jobs on (peer_node, the ppservers role), the nodes that joined it (peer_node too), the
// heads it joins (head_link), and discovery of more nodes on the local network.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "discovery.hpp"
#include "head_link.hpp"
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
  // Draining: the nodes using this one's workers (peers that dial it, heads it joined) get back
  // the jobs that had not started, and send no more. Returns how many went back.
  std::size_t drain(std::string_view why);
  bool listening() const { return server_ != nullptr; }
  std::uint16_t port() const { return server_ ? server_->port() : 0; }
  const std::vector<std::shared_ptr<peer_node>>& dialed() const { return dialed_; }
  // Nodes that joined this one, by name, each kept once it has joined (a node that joins again
  // under its name gets its entry back).
  const std::vector<std::shared_ptr<peer_node>>& joined() const { return joined_; }
  const std::vector<std::shared_ptr<head_link>>& heads() const { return heads_; }
  std::size_t remote_slots() const;  // of the dialed and joined nodes

 private:
  void dial(const std::string& host, std::uint16_t port);
  void adopt_joined(peer_channel& authenticated);

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  peers_options opts_;
  peer_settings& settings_;
  std::unique_ptr<peer_server> server_;
  std::vector<std::shared_ptr<peer_node>> dialed_;
  std::vector<std::shared_ptr<peer_node>> joined_;
  std::vector<std::shared_ptr<head_link>> heads_;
  std::unique_ptr<discovery> discovery_;
};

}  // namespace ppgate
