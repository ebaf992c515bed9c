#include "stats_format.hpp"

#include "json_writer.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

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
  // Not in pp's table: which Python each node's workers run, one line per version.
  std::vector<std::pair<std::string, std::string>> pythons;  // version, node names
  for (const auto& n : s.nodes) {
    if (n.python.empty()) continue;
    auto it = std::find_if(pythons.begin(), pythons.end(), [&](auto& p) { return p.first == n.python; });
    if (it == pythons.end()) pythons.emplace_back(n.python, n.name);
    else it->second += ", " + n.name;
  }
  for (const auto& [version, names] : pythons) out += "Python " + version + " on " + names + "\n";
  // pp warns here when jobs were rescheduled after a node was lost: their time was counted twice.
  if (s.retried > 0)
    out += "WARNING: statistics provided above is not accurate due to job rescheduling\n";
  out += "\n";
  return out;
}

void write_stats_json(json_writer& w, const scheduler_stats& s, std::size_t ncpus) {
  w.begin_object()
      .member("elapsed", s.elapsed_seconds)
      .member("ncpus", ncpus)
      .member("active_tasks", s.queued + s.running)
      .member("queue_depth", s.queued)
      .member("worker_restarts", s.worker_restarts)
      .member("retried", s.retried);
  w.key("worker_restarts_by_reason").begin_object();
  for (std::size_t i = 0; i < restart_reason_count; ++i)
    w.member(to_string(static_cast<restart_reason>(i)), s.restarts_by_reason[i]);
  w.end_object();
  w.key("jobs")
      .begin_object()
      .member("submitted", s.submitted)
      .member("queued", s.queued)
      .member("running", s.running)
      .member("done", s.done)
      .member("failed", s.failed)
      .member("cancelled", s.cancelled)
      .member("lost", s.lost)
      .end_object();
  w.key("nodes").begin_array();
  for (const auto& n : s.nodes) {
    w.begin_object()
        .member("name", n.name)
        .member("python", n.python)
        .member("ncpus", n.ncpus)
        .member("njobs", n.njobs)
        .member("time", n.job_time)
        .member("time_per_job", n.njobs ? n.job_time / static_cast<double>(n.njobs) : 0.0)
        .end_object();
  }
  w.end_array().end_object();
}

std::string format_stats_json(const scheduler_stats& s, std::size_t ncpus) {
  std::string out;
  json_writer w(out);
  write_stats_json(w, s, ncpus);
  return out;
}

void write_nodes_json(json_writer& w, const std::vector<node_summary>& nodes) {
  w.begin_array();
  for (const auto& n : nodes) {
    w.begin_object()
        .member("name", n.name)
        .member("python", n.python)
        .member("kind", n.remote ? "remote" : "local")
        .member("slots", n.slots)
        .member("busy", n.busy);
    if (n.remote) {
      w.member("connected", n.connected).member("joined", n.joined).member("last_error", n.last_error);
    } else {
      w.key("workers").begin_array();
      for (const worker_info& wi : n.workers) {
        w.begin_object().member("pid", wi.pid).member("state", to_string(wi.state)).key("job");
        if (wi.job) w.value(wi.job);
        else w.null();
        w.member("jobs_run", wi.jobs_run).member("sources_sent", wi.sources_sent).end_object();
      }
      w.end_array();
    }
    w.end_object();
  }
  w.end_array();
}

namespace {

void metric_header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void metric_value(std::string& out, std::string_view name, std::string_view labels, double value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += python_float_repr(value);
  out += '\n';
}

// A label value, escaped as the text format wants (backslash, quote, newline).
std::string label(std::string_view name, std::string_view value) {
  std::string out(name);
  out += "=\"";
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  out += '"';
  return out;
}

}  // namespace

std::string format_metrics(const scheduler_stats& s, std::size_t workers, std::size_t busy_workers) {
  std::string out;
  metric_header(out, "ppgate_jobs_submitted_total", "counter", "Jobs accepted.");
  metric_value(out, "ppgate_jobs_submitted_total", "", static_cast<double>(s.submitted));
  metric_header(out, "ppgate_jobs_ended_total", "counter", "Jobs that reached a terminal state, by state.");
  const std::pair<const char*, std::uint64_t> ended[] = {
      {"done", s.done}, {"failed", s.failed}, {"cancelled", s.cancelled}, {"lost", s.lost}};
  for (const auto& [state, n] : ended)
    metric_value(out, "ppgate_jobs_ended_total", label("state", state), static_cast<double>(n));
  metric_header(out, "ppgate_jobs", "gauge", "Jobs not yet ended, by state.");
  metric_value(out, "ppgate_jobs", label("state", "queued"), static_cast<double>(s.queued));
  metric_value(out, "ppgate_jobs", label("state", "running"), static_cast<double>(s.running));
  metric_header(out, "ppgate_queue_depth", "gauge", "Jobs waiting for a slot.");
  metric_value(out, "ppgate_queue_depth", "", static_cast<double>(s.queued));
  metric_header(out, "ppgate_job_retries_total", "counter", "Attempts repeated after a worker died mid-job.");
  metric_value(out, "ppgate_job_retries_total", "", static_cast<double>(s.retried));
  metric_header(out, "ppgate_worker_restarts_total", "counter", "Worker processes replaced, by reason.");
  for (std::size_t i = 0; i < restart_reason_count; ++i)
    metric_value(out, "ppgate_worker_restarts_total", label("reason", to_string(static_cast<restart_reason>(i))),
                 static_cast<double>(s.restarts_by_reason[i]));
  metric_header(out, "ppgate_workers", "gauge", "Local worker slots, by state.");
  metric_value(out, "ppgate_workers", label("state", "busy"), static_cast<double>(busy_workers));
  metric_value(out, "ppgate_workers", label("state", "idle"), static_cast<double>(workers - busy_workers));
  metric_header(out, "ppgate_job_latency_seconds", "histogram",
                "Time from submission to end of ended jobs.");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < latency_histogram::bounds.size(); ++i) {
    cumulative += s.latency.counts[i];
    metric_value(out, "ppgate_job_latency_seconds_bucket",
                 label("le", python_float_repr(latency_histogram::bounds[i])), static_cast<double>(cumulative));
  }
  metric_value(out, "ppgate_job_latency_seconds_bucket", label("le", "+Inf"), static_cast<double>(s.latency.count));
  metric_value(out, "ppgate_job_latency_seconds_sum", "", s.latency.sum);
  metric_value(out, "ppgate_job_latency_seconds_count", "", static_cast<double>(s.latency.count));
  metric_header(out, "ppgate_node_jobs_total", "counter", "Jobs run to completion, by node (pp's job count).");
  for (const auto& n : s.nodes)
    metric_value(out, "ppgate_node_jobs_total", label("node", n.name), static_cast<double>(n.njobs));
  metric_header(out, "ppgate_node_job_seconds_total", "counter", "Sum of job run times, by node (pp's job time sum).");
  for (const auto& n : s.nodes) metric_value(out, "ppgate_node_job_seconds_total", label("node", n.name), n.job_time);
  metric_header(out, "ppgate_node_slots", "gauge", "Slots (workers) of each node.");
  for (const auto& n : s.nodes)
    metric_value(out, "ppgate_node_slots", label("node", n.name), static_cast<double>(n.ncpus));
  metric_header(out, "ppgate_uptime_seconds", "gauge", "Time since the node started.");
  metric_value(out, "ppgate_uptime_seconds", "", s.elapsed_seconds);
  return out;
}

}  // namespace ppgate
