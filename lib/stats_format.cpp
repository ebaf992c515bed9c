#include "stats_format.hpp"

#include "json_writer.hpp"

#include <cstdio>

namespace ppgate {

std::string format_stats_table(const scheduler_stats& s, std::size_t ncpus) {
  std::string out = "Job execution statistics:\n";
  double total = 0;
  for (const auto& n : s.nodes) total += static_cast<double>(n.njobs);
  out += " job count | % of all jobs | job time sum | time per job | job server\n";
  char line[512];
  for (const auto& n : s.nodes) {
    if (n.njobs == 0) continue;
    std::snprintf(line, sizeof line, "    %6llu |        %6.2f |     %8.4f |  %11.6f | %s\n",
                  static_cast<unsigned long long>(n.njobs), 100.0 * static_cast<double>(n.njobs) / total,
                  n.job_time, n.job_time / static_cast<double>(n.njobs), n.name.c_str());
    out += line;
  }
  out += "Time elapsed since server creation " + python_float_repr(s.elapsed_seconds) + "\n";
  out += std::to_string(s.queued + s.running) + " active tasks, " + std::to_string(ncpus) + " cores\n";
  // pp warns here when jobs were rescheduled after a node was lost: their time was counted twice.
  if (s.retried > 0)
    out += "WARNING: statistics provided above is not accurate due to job rescheduling\n";
  out += "\n";
  return out;
}

std::string format_stats_json(const scheduler_stats& s, std::size_t ncpus) {
  std::string out = "{\"elapsed\":";
  append_json_number(out, s.elapsed_seconds);
  out += ",\"ncpus\":" + std::to_string(ncpus);
  out += ",\"active_tasks\":" + std::to_string(s.queued + s.running);
  out += ",\"queue_depth\":" + std::to_string(s.queued);
  out += ",\"worker_restarts\":" + std::to_string(s.worker_restarts);
  out += ",\"retried\":" + std::to_string(s.retried);
  out += ",\"jobs\":{\"submitted\":" + std::to_string(s.submitted) +
         ",\"queued\":" + std::to_string(s.queued) + ",\"running\":" + std::to_string(s.running) +
         ",\"done\":" + std::to_string(s.done) + ",\"failed\":" + std::to_string(s.failed) +
         ",\"cancelled\":" + std::to_string(s.cancelled) + ",\"lost\":" + std::to_string(s.lost) + "}";
  out += ",\"nodes\":[";
  bool first = true;
  for (const auto& n : s.nodes) {
    if (!first) out += ',';
    first = false;
    out += "{\"name\":";
    append_json_string(out, n.name);
    out += ",\"ncpus\":" + std::to_string(n.ncpus) + ",\"njobs\":" + std::to_string(n.njobs) + ",\"time\":";
    append_json_number(out, n.job_time);
    out += ",\"time_per_job\":";
    append_json_number(out, n.njobs ? n.job_time / static_cast<double>(n.njobs) : 0.0);
    out += '}';
  }
  out += "]}";
  return out;
}

}  // namespace ppgate
