// Renderings of scheduler statistics: JSON for /v1/stats and pp's print_stats() table.
#pragma once

#include "json_writer.hpp"
#include "node_directory.hpp"
#include "scheduler.hpp"

#include <string>

namespace ppgate {

// pp's print_stats() output, byte for byte (ppft 1.7 layout).
std::string format_stats_table(const scheduler_stats& s, std::size_t ncpus);

// GET /v1/stats and the stats inside each /v1/events snapshot.
void write_stats_json(json_writer& w, const scheduler_stats& s, std::size_t ncpus);
std::string format_stats_json(const scheduler_stats& s, std::size_t ncpus);

// The nodes and their workers, as a JSON array (GET /v1/nodes, the event stream).
void write_nodes_json(json_writer& w, const std::vector<node_summary>& nodes);

// What /metrics shows besides the scheduler's figures.
struct metrics_context {
  std::size_t workers = 0, busy_workers = 0;  // the local pool's
  std::string_view version, python;           // ppgate's, and the Python its workers run
  peer_link_summary peers;
};

// The Prometheus text exposition format (version 0.0.4) for GET /metrics, with the standard
// process_* metrics of this process.
std::string format_metrics(const scheduler_stats& s, const metrics_context& c);

}  // namespace ppgate
