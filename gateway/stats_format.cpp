#include "stats_format.hpp"

#include "json_writer.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sys/resource.h>
#include <unistd.h>
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


void histogram_metric(std::string& out, const char* name, const char* help, const latency_histogram& h) {
  metric_header(out, name, "histogram", help);
  const std::string bucket = std::string(name) + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < latency_histogram::bounds.size(); ++i) {
    cumulative += h.counts[i];
    metric_value(out, bucket, label("le", python_float_repr(latency_histogram::bounds[i])),
                 static_cast<double>(cumulative));
  }
  metric_value(out, bucket, label("le", "+Inf"), static_cast<double>(h.count));
  metric_value(out, std::string(name) + "_sum", "", h.sum);
  metric_value(out, std::string(name) + "_count", "", static_cast<double>(h.count));
}

// The process_* metrics every Prometheus client library exports, from /proc/self.
void process_metrics(std::string& out) {
  std::string stat;
  if (std::FILE* f = std::fopen("/proc/self/stat", "r")) {
    char buf[1024];
    const std::size_t n = std::fread(buf, 1, sizeof buf, f);
    stat.assign(buf, n);
    std::fclose(f);
  }
  // Fields after the command's closing parenthesis, from field 3 (state) on.
  std::vector<std::string> fields;
  if (const auto close = stat.rfind(')'); close != std::string::npos) {
    std::size_t p = close + 2;
    while (p < stat.size()) {
      const auto space = stat.find(' ', p);
      fields.push_back(stat.substr(p, space == std::string::npos ? std::string::npos : space - p));
      if (space == std::string::npos) break;
      p = space + 1;
    }
  }
  const auto field = [&](std::size_t number) {  // man 5 proc numbering
    return number >= 3 && number - 3 < fields.size() ? std::strtod(fields[number - 3].c_str(), nullptr) : 0.0;
  };
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  double boot_time = 0;
  if (std::FILE* f = std::fopen("/proc/stat", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr)
      if (std::strncmp(line, "btime ", 6) == 0) boot_time = std::strtod(line + 6, nullptr);
    std::fclose(f);
  }
  std::size_t open_fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    ++open_fds;
  rlimit fds{};
  ::getrlimit(RLIMIT_NOFILE, &fds);

  metric_header(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
  metric_value(out, "process_cpu_seconds_total", "", (field(14) + field(15)) / ticks);
  metric_header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  metric_value(out, "process_resident_memory_bytes", "", field(24) * page);
  metric_header(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
  metric_value(out, "process_virtual_memory_bytes", "", field(23));
  metric_header(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
  metric_value(out, "process_start_time_seconds", "", boot_time + field(22) / ticks);
  metric_header(out, "process_open_fds", "gauge", "Number of open file descriptors.");
  metric_value(out, "process_open_fds", "", static_cast<double>(open_fds));
  metric_header(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
  metric_value(out, "process_max_fds", "", static_cast<double>(fds.rlim_cur));
}

}  // namespace

std::string format_metrics(const scheduler_stats& s, const metrics_context& c) {
  std::string out;
  metric_header(out, "ppgate_build_info", "gauge", "ppgate's version and the Python its workers run; always 1.");
  metric_value(out, "ppgate_build_info", label("version", c.version) + "," + label("python", c.python), 1);
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
  metric_header(out, "ppgate_job_retries_total", "counter",
                "Attempts repeated: after a worker died mid-job, or after the job failed (retries).");
  metric_value(out, "ppgate_job_retries_total", "", static_cast<double>(s.retried));
  metric_header(out, "ppgate_worker_restarts_total", "counter", "Worker processes replaced, by reason.");
  for (std::size_t i = 0; i < restart_reason_count; ++i)
    metric_value(out, "ppgate_worker_restarts_total", label("reason", to_string(static_cast<restart_reason>(i))),
                 static_cast<double>(s.restarts_by_reason[i]));
  metric_header(out, "ppgate_workers", "gauge", "Local worker slots, by state.");
  metric_value(out, "ppgate_workers", label("state", "busy"), static_cast<double>(c.busy_workers));
  metric_value(out, "ppgate_workers", label("state", "idle"), static_cast<double>(c.workers - c.busy_workers));
  histogram_metric(out, "ppgate_job_latency_seconds", "Time from submission to end of ended jobs.", s.latency);
  histogram_metric(out, "ppgate_job_run_seconds", "Run time of each job run, as its worker measured it.",
                   s.run_time);
  metric_header(out, "ppgate_node_jobs_total", "counter", "Jobs run to completion, by node (pp's job count).");
  for (const auto& n : s.nodes)
    metric_value(out, "ppgate_node_jobs_total", label("node", n.name), static_cast<double>(n.njobs));
  metric_header(out, "ppgate_node_job_seconds_total", "counter", "Sum of job run times, by node (pp's job time sum).");
  for (const auto& n : s.nodes) metric_value(out, "ppgate_node_job_seconds_total", label("node", n.name), n.job_time);
  metric_header(out, "ppgate_node_slots", "gauge", "Slots (workers) of each node.");
  for (const auto& n : s.nodes)
    metric_value(out, "ppgate_node_slots", label("node", n.name), static_cast<double>(n.ncpus));
  metric_header(out, "ppgate_peer_links_up", "gauge",
                "Peer links up: to nodes whose workers this node uses, and to heads it joined.");
  metric_value(out, "ppgate_peer_links_up", label("role", "node"), static_cast<double>(c.peers.nodes_connected));
  metric_value(out, "ppgate_peer_links_up", label("role", "head"), static_cast<double>(c.peers.heads_connected));
  metric_header(out, "ppgate_peer_links_established_total", "counter", "Peer links authenticated, either side dialing.");
  metric_value(out, "ppgate_peer_links_established_total", "", static_cast<double>(c.peers.counters.established));
  metric_header(out, "ppgate_peer_reconnects_total", "counter",
                "Peer links made again to a node or head this node had a link to before.");
  metric_value(out, "ppgate_peer_reconnects_total", "", static_cast<double>(c.peers.counters.reconnects));
  metric_header(out, "ppgate_peer_auth_failures_total", "counter",
                "Peer handshakes and frames that failed authentication (a wrong secret, forged or replayed frames).");
  metric_value(out, "ppgate_peer_auth_failures_total", "", static_cast<double>(c.peers.counters.auth_failures));
  metric_header(out, "ppgate_uptime_seconds", "gauge", "Time since the node started.");
  metric_value(out, "ppgate_uptime_seconds", "", s.elapsed_seconds);
  process_metrics(out);
  return out;
}

}  // namespace ppgate
