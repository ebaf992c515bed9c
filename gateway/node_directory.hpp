// What the REST API and the event stream see of the nodes that run this node's jobs: the local
// pool, the peers it dials and the nodes that joined it. node_server implements it; tests implement it with fakes.
#pragma once

#include "peer/peer_settings.hpp"
#include "worker_slot.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace ppgate {

struct node_summary {
  std::string name;
  std::string python;  // the version its workers run; empty while unknown
  bool remote = false;
  bool joined = false;  // a remote node that joined this one (rather than one it dials)
  std::size_t slots = 0;
  std::size_t busy = 0;
  bool connected = true;            // a remote node's link is up
  std::string last_error;           // a remote node's, empty for none
  std::vector<worker_info> workers;  // the local node's
};

// The node's peer links, for /metrics.
struct peer_link_summary {
  peer_link_counters counters;
  std::size_t nodes_connected = 0;  // remote nodes whose workers this node uses, link up
  std::size_t heads_connected = 0;  // heads this node joined, link up
};

class node_directory {
 public:
  virtual ~node_directory() = default;
  // The local node first, then each peer.
  virtual std::vector<node_summary> nodes() const = 0;
  virtual std::size_t local_workers() const = 0;
  // pp's ncpus: local workers plus the peers' slots.
  virtual std::size_t total_slots() const = 0;
  // Resizes the local pool; empty: one worker per usable CPU.
  virtual void resize_local(std::optional<std::size_t> workers) = 0;
  virtual peer_link_summary peer_links() const { return {}; }
};

}  // namespace ppgate
