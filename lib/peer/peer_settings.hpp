// What a node needs to speak the peer protocol: the cluster secret, its advertised name, TLS and
// the liveness timings. Plain data, so the command line can hold it without the peer feature's
// Asio and OpenSSL headers.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ppgate {

// TLS for peer links: a certificate and key to present, and a CA that the other side's
// certificate must chain to (without a CA, links are encrypted and the secret authenticates).
struct tls_config {
  std::string cert_file, key_file, ca_file;
  bool enabled() const { return !cert_file.empty(); }
};

// What the links that use one peer_settings have seen (ppgate_peer_* in /metrics).
struct peer_link_counters {
  std::uint64_t established = 0;    // links authenticated, either side dialing
  std::uint64_t reconnects = 0;     // of them, links to a peer or head this node had a link to before
  std::uint64_t auth_failures = 0;  // handshakes or frames that failed authentication
};

struct peer_settings {
  std::string secret;             // the cluster secret: both sides must hold it
  std::string name;               // how this node names itself to peers (its advertised address)
  tls_config tls;
  std::chrono::milliseconds heartbeat{1000};
  int missed_heartbeats = 5;      // silence for this many intervals ends the connection
  std::chrono::milliseconds handshake_timeout{10000};
  // Counted by every link made with these settings: they are shared by all of a node's links,
  // on its one thread.
  mutable peer_link_counters counters;
};

// Which peers this node has: its peer port, the nodes it dials, discovery (lib/peer/peers.hpp).
struct peers_options {
  std::string listen_host;  // empty: no peer port
  std::uint16_t listen_port = 0;
  std::vector<std::pair<std::string, std::uint16_t>> dial;
  std::vector<std::pair<std::string, std::uint16_t>> join;  // heads this node joins (--join)
  std::size_t inflight_per_slot = 8;  // jobs in flight per slot of a peer (beyond one: short jobs)
  bool discover = false;              // find peers of the same cluster by UDP broadcast
  std::string cluster = "ppgate";
  std::uint16_t discover_port = 7099;
};

}  // namespace ppgate
