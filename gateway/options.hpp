// Command line of `ppgate`: parsing, validation and --help. No Beast here.
#pragma once

#include "peer/peer_settings.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ppgate {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct serve_options {
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 8080;
  // --listen-fd FD: an inherited TCP socket, bound and listening, to serve HTTP on instead of
  // binding --listen (listen_host and listen_port then say where it is bound); -1: none.
  int listen_fd = -1;
  std::optional<std::size_t> workers;  // empty: one per usable CPU
  std::string secret;                  // bearer token; empty: none
  std::vector<std::string> secret_variables;  // the environment variables the secrets came from
  std::vector<std::string> warnings;  // about the options, for the log once it is set up
  bool insecure = false;
  std::size_t max_jobs_per_worker = 0;  // a fresh worker process after this many jobs (0: never)
  std::uint64_t max_worker_memory = 0;  // bytes a worker may hold (0: no limit)
  std::string python = "python3";  // the interpreter workers run (--python)
  std::string python_version;      // --python-version: given, so the start-up probe is skipped
  std::string worker_dir;          // where the worker's files are; empty: found (locate_worker_script)
  std::string pid_file;
  std::string journal;  // --journal: the SQLite database jobs are recorded in; empty: none
  std::optional<std::chrono::seconds> idle_exit;
  // SIGTERM: how long running jobs may take to finish before the node stops anyway.
  std::chrono::milliseconds drain_timeout{30000};
  std::size_t max_body_bytes = 64u * 1024 * 1024;
  std::size_t max_header_bytes = 16 * 1024;
  std::size_t max_connections = 512;
  std::chrono::seconds idle_timeout{60};
  std::chrono::seconds header_timeout{10};  // a request head, once begun, must be whole within this
  std::size_t keep_finished = 100000;
  std::size_t keep_finished_bytes = 512u * 1024 * 1024;
  std::optional<std::chrono::seconds> keep_finished_for;  // and at most this long after they end
  std::string log_level = "info";
  std::string log_format = "text";  // or "json": one JSON object per line
  long parent_pid = 0;  // stop when this process exits (0: no such watch)
  // --adopt-from FD: the Unix socket the caller sends the workers it started on, one for each
  // of the first slots (receive_adopted_workers); -1: none.
  int adopt_from = -1;
  std::chrono::milliseconds stats_interval{1000};  // between snapshots on /v1/events
  // How long the event loop polls after results went to a job session, while no job runs
  // (node_server::should_poll). 0 disables it; it is off on a single CPU.
  std::chrono::microseconds busy_poll{100};

  // Peers (docs/peers.md).
  peers_options peers;  // the peer port, peers to dial, discovery
  peer_settings peer;   // secret, advertised name, TLS
};

enum class command { serve, help, version };

struct parsed_command {
  command what = command::help;
  serve_options serve;
};

// Throws usage_error with a message for the user; `environment` lookups go through getenv.
parsed_command parse_command_line(int argc, const char* const* argv);

std::string help_text();

// Blanks and removes the environment variables a secret was read from, so no worker (and no job)
// inherits them and /proc/<pid>/environ does not show them.
void forget_secret_variables(const std::vector<std::string>& names);

// Finds the worker's bootstrap, ppgate_worker.py (with its extension module and runtime beside
// it): --worker-dir, $PPGATE_WORKER_DIR, next to this executable, the build tree, ../libexec/ppgate.
std::string locate_worker_script(const std::string& configured_dir);

}  // namespace ppgate
