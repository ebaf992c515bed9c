#include "rest_api.hpp"

#include "job_json.hpp"
#include "job_parser.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "node_directory.hpp"
#include "request_head.hpp"
#include "stats_format.hpp"

#include <boost/asio/this_coro.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <openssl/crypto.h>
#include <simdjson.h>

#include <charconv>
#include <limits>

namespace ppgate {

std::string_view web_page_html();  // generated from web/index.html

namespace {

constexpr double max_wait_seconds = 3600;

// ?wait=S: seconds as a number from 0 to 3600. Throws request_error otherwise.
std::optional<double> parse_wait(std::string_view query) {
  const auto text = query_param(query, "wait");
  if (!text) return std::nullopt;
  double seconds = -1;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), seconds);
  if (ec != std::errc() || p != text->data() + text->size() || !(seconds >= 0) ||
      seconds > max_wait_seconds)
    throw request_error("query parameter 'wait' must be a number of seconds from 0 to 3600");
  return seconds;
}

bool parse_job_id(std::string_view text, std::uint64_t& id) {
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  return ec == std::errc() && p == text.data() + text.size() && !text.empty();
}

bool wants_text(const http_request& req) {
  const auto accept = req[http::field::accept];
  return accept.find("text/plain") != std::string_view::npos &&
         accept.find("application/json") == std::string_view::npos;
}

// {"count": N}: the local pool's size, for GET and PUT /v1/workers.
std::string worker_count_json(std::size_t count) {
  std::string out;
  json_writer(out).begin_object().member("count", count).end_object();
  return out;
}

}  // namespace

rest_api::rest_api(scheduler& sched, node_directory& nodes, std::string secret, bool insecure)
    : sched_(sched), nodes_(nodes), secret_(std::move(secret)), insecure_(insecure) {}

std::optional<http_response> rest_api::check_access(const http_request& req,
                                                    std::string_view path) const {
  return refuse_request_head(req, path, access_policy{secret_, insecure_});
}

net::awaitable<http_response> rest_api::handle(http_request& req) {
  const auto [path, query] = split_target(req.target());
  if (auto denied = check_access(req, path)) co_return std::move(*denied);

  const auto method = req.method();
  auto not_allowed = [&](std::string_view allow) {
    auto res = make_error(http::status::method_not_allowed,
                          std::string(req.method_string()) + " is not allowed on " + std::string(path),
                          req.version());
    res.set(http::field::allow, allow);
    return res;
  };

  try {
    if (path == "/v1/jobs") {
      if (method == http::verb::get) co_return list_jobs(req, query);
      if (method != http::verb::post) co_return not_allowed("GET, POST");
      co_return co_await submit_jobs(req, parse_wait(query));
    }
    if (path.starts_with("/v1/jobs/")) {
      std::uint64_t id = 0;
      const auto id_text = path.substr(9);
      if (!parse_job_id(id_text, id))
        co_return make_error(http::status::not_found, "no job '" + std::string(id_text) + "'", req.version());
      if (method == http::verb::get) co_return co_await get_job(req, id, parse_wait(query));
      if (method == http::verb::delete_) co_return cancel_job(req, id);
      co_return not_allowed("GET, DELETE");
    }
    if (path == "/v1/stats") {
      if (method != http::verb::get) co_return not_allowed("GET");
      co_return stats(req);
    }
    if (path == "/v1/nodes") {
      if (method != http::verb::get) co_return not_allowed("GET");
      co_return nodes(req);
    }
    if (path == "/v1/workers") {
      if (method == http::verb::put) co_return resize_workers(req);
      if (method == http::verb::get)
        co_return make_response(http::status::ok, worker_count_json(nodes_.local_workers()), req.version());
      co_return not_allowed("GET, PUT");
    }
    if (path == "/metrics") {
      if (method != http::verb::get) co_return not_allowed("GET");
      const node_summary local = nodes_.nodes().front();
      const metrics_context context{.workers = local.slots, .busy_workers = local.busy, .version = PPGATE_VERSION,
                                    .python = local.python, .peers = nodes_.peer_links()};
      co_return make_response(http::status::ok, format_metrics(sched_.stats(), context), req.version(),
                              "text/plain; version=0.0.4; charset=utf-8");
    }
    if (path == "/healthz") {
      if (method != http::verb::get) co_return not_allowed("GET");
      std::string health;
      json_writer(health).begin_object().member("status", "ok").member("workers", nodes_.local_workers()).end_object();
      co_return make_response(http::status::ok, std::move(health), req.version());
    }
    if (path == "/" || path == "/index.html") {
      if (method != http::verb::get) co_return not_allowed("GET");
      co_return make_response(http::status::ok, std::string(web_page_html()), req.version(),
                              "text/html; charset=utf-8");
    }
    co_return make_error(http::status::not_found, "no route " + std::string(path), req.version());
  } catch (const request_error& e) {
    co_return make_error(http::status::bad_request, e.what(), req.version());
  }
}

net::awaitable<http_response> rest_api::submit_jobs(http_request& req, std::optional<double> wait) {
  if (!sched_.accepting())  // draining (SIGTERM)
    co_return make_error(http::status::service_unavailable, sched_.refusal(), req.version());
  job_submission submission = parse_job_submission(
      req.body(), [this](function_def def) { return sched_.intern(std::move(def)); });
  if (const std::string taken = sched_.ids_taken(submission.jobs); !taken.empty())
    co_return make_error(http::status::conflict, taken, req.version());

  std::vector<std::uint64_t> ids;
  ids.reserve(submission.jobs.size());
  for (auto& spec : submission.jobs) ids.push_back(sched_.submit(std::move(spec)).id);
  sched_.flush_records();  // with --journal: acknowledged only once recorded
  if (wait) co_await wait_for_jobs(ids, *wait);

  bool all_finished = true;
  std::string body;
  json_writer w(body);
  if (submission.batch) w.begin_object().key("jobs").begin_array();
  for (const auto id : ids) {
    const job* j = sched_.find(id);
    if (j == nullptr) {  // forgotten already (--keep-finished): it ended
      w.begin_object().member("id", id).member("status", "expired").end_object();
      continue;
    }
    all_finished = all_finished && is_terminal(j->state);
    write_job_json(w, *j);
  }
  if (submission.batch) w.end_array().end_object();
  // 200 when the answer holds the results; 202 when the jobs are still on their way.
  const auto status = all_finished && wait ? http::status::ok : http::status::accepted;
  auto res = make_response(status, std::move(body), req.version());
  if (!submission.batch) res.set(http::field::location, "/v1/jobs/" + std::to_string(ids.front()));
  co_return res;
}

net::awaitable<http_response> rest_api::get_job(const http_request& req, std::uint64_t id,
                                                std::optional<double> wait) {
  if (wait) {
    const std::vector<std::uint64_t> ids{id};
    co_await wait_for_jobs(ids, *wait);
  }
  const job* j = sched_.find(id);
  if (j == nullptr)
    co_return make_error(http::status::not_found, "no job " + std::to_string(id), req.version());
  co_return make_response(http::status::ok, format_job_json(*j), req.version());
}

http_response rest_api::list_jobs(const http_request& req, std::string_view query) {
  scheduler::listing_filter filter;
  try {
    filter.group = query_text(query, "group");
  } catch (const std::invalid_argument& e) {
    throw request_error(std::string("query parameter 'group': ") + e.what());
  }
  if (const auto status = query_param(query, "status")) {
    for (auto s : {job_state::queued, job_state::running, job_state::done, job_state::failed, job_state::cancelled,
                   job_state::lost})
      if (*status == to_string(s)) filter.state = s;
    if (!filter.state)
      throw request_error("query parameter 'status' must be queued, running, done, failed, cancelled or lost");
  }
  const auto number = [&](const char* name, std::uint64_t min, std::uint64_t max) -> std::optional<std::uint64_t> {
    const auto text = query_param(query, name);
    if (!text) return std::nullopt;
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
    if (ec != std::errc() || p != text->data() + text->size() || n < min || n > max)
      throw request_error("query parameter '" + std::string(name) + "' must be a whole number from " +
                          std::to_string(min) + " to " + std::to_string(max));
    return n;
  };
  filter.limit = number("limit", 1, 10000).value_or(100);
  filter.after = number("after", 0, std::numeric_limits<std::uint64_t>::max()).value_or(0);
  const auto jobs = sched_.list(filter);
  std::string body;
  json_writer w(body);
  w.begin_object().key("jobs").begin_array();
  for (const job* j : jobs) write_job_summary_json(w, *j);
  w.end_array();
  // A full page: the next one starts after its last job.
  if (jobs.size() == filter.limit) w.member("next_after", jobs.back()->seq);
  w.end_object();
  return make_response(http::status::ok, std::move(body), req.version());
}

http_response rest_api::cancel_job(const http_request& req, std::uint64_t id) {
  switch (sched_.cancel(id)) {
    case scheduler::cancel_result::not_found:
      return make_error(http::status::not_found, "no job " + std::to_string(id), req.version());
    case scheduler::cancel_result::already_finished: {
      const job* j = sched_.find(id);
      return make_error(http::status::conflict,
                        "job " + std::to_string(id) + " has already ended (" +
                            std::string(to_string(j->state)) + ")",
                        req.version());
    }
    case scheduler::cancel_result::cancelled:
      break;
  }
  return make_response(http::status::ok, format_job_json(*sched_.find(id)), req.version());
}

http_response rest_api::stats(const http_request& req) {
  const auto snapshot = sched_.stats();
  if (wants_text(req))
    return make_response(http::status::ok, format_stats_table(snapshot, nodes_.total_slots()),
                         req.version(), "text/plain; charset=utf-8");
  return make_response(http::status::ok, format_stats_json(snapshot, nodes_.total_slots()), req.version());
}

http_response rest_api::nodes(const http_request& req) {
  std::string body;
  json_writer w(body);
  w.begin_object().key("nodes");
  write_nodes_json(w, nodes_.nodes());
  w.end_object();
  return make_response(http::status::ok, std::move(body), req.version());
}

http_response rest_api::resize_workers(http_request& req) {
  // {"count": N} or {"count": "auto"}
  std::string& body = req.body();
  const std::size_t length = body.size();
  body.reserve(length + simdjson::SIMDJSON_PADDING);
  simdjson::ondemand::parser parser;
  simdjson::ondemand::document doc;
  simdjson::ondemand::object obj;
  std::optional<std::size_t> count;
  bool have_count = false;
  if (parser.iterate(body.data(), length, body.capacity()).get(doc) || doc.get_object().get(obj))
    throw request_error("the body must be a JSON object such as {\"count\": 4}");
  for (auto field : obj) {
    std::string_view key;
    simdjson::ondemand::value v;
    if (field.unescaped_key().get(key) || field.value().get(v))
      throw request_error("invalid JSON in the body");
    if (key != "count") throw request_error("unknown field '" + std::string(key) + "'");
    std::string_view text;
    std::int64_t n = 0;
    if (v.get_string().get(text) == simdjson::SUCCESS && text == "auto") {
      count.reset();
    } else if (v.get_int64().get(n) == simdjson::SUCCESS && n >= 0 && n <= 1024) {
      count = static_cast<std::size_t>(n);
    } else {
      throw request_error("field 'count' must be an integer from 0 to 1024 or \"auto\"");
    }
    have_count = true;
  }
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS) throw request_error("invalid JSON: trailing content after the body");
  if (!have_count) throw request_error("field 'count' is required");
  nodes_.resize_local(count);
  log::info("worker pool resized to ", nodes_.local_workers());
  return make_response(http::status::ok, worker_count_json(nodes_.local_workers()), req.version());
}

net::awaitable<void> rest_api::wait_for_jobs(const std::vector<std::uint64_t>& ids, double wait) {
  const auto deadline =
      steady_clock::now() + std::chrono::duration_cast<steady_clock::duration>(std::chrono::duration<double>(wait));
  auto wake = std::make_shared<net::steady_timer>(co_await net::this_coro::executor);
  std::size_t next = 0;  // jobs before this index have ended
  while (steady_clock::now() < deadline) {
    while (next < ids.size()) {
      const job* j = sched_.find(ids[next]);
      if (j != nullptr && !is_terminal(j->state)) break;
      ++next;
    }
    if (next == ids.size()) co_return;
    // The scheduler cancels `wake` when this job ends; otherwise it fires at the deadline.
    sched_.notify_on_end(*sched_.find(ids[next]), wake);
    wake->expires_at(deadline);
    co_await wake->async_wait(use_nothrow_awaitable);
  }
}

}  // namespace ppgate
