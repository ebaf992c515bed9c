// The REST API of docs/rest.md: routing, access checks and the JSON of each route.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "http.hpp"
#include "job.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ppgate {

class node_directory;
class scheduler;

class rest_api {
 public:
  // `sched` and `nodes` are borrowed and outlive the API. `secret` is the bearer token clients
  // must present (empty: none); `insecure` accepts any Host name (--insecure).
  rest_api(scheduler& sched, node_directory& nodes, std::string secret, bool insecure);

  // Never throws for bad input: every client mistake becomes a JSON error response.
  net::awaitable<http_response> handle(http_request& req);

  // The refusal for a request that may not reach `path` (token, host, origin), if any.
  std::optional<http_response> check_access(const http_request& req, std::string_view path) const;

 private:
  net::awaitable<http_response> submit_jobs(http_request& req, std::optional<double> wait);
  net::awaitable<http_response> get_job(const http_request& req, std::uint64_t id, std::optional<double> wait);
  http_response cancel_job(const http_request& req, std::uint64_t id);
  http_response list_jobs(const http_request& req, std::string_view query);
  http_response stats(const http_request& req);
  http_response nodes(const http_request& req);
  http_response resize_workers(http_request& req);

  // Returns when every job in `ids` has ended, or after `wait` seconds, whichever comes first.
  net::awaitable<void> wait_for_jobs(const std::vector<std::uint64_t>& ids, double wait);

  scheduler& sched_;
  node_directory& nodes_;
  std::string secret_;
  bool insecure_;
};

}  // namespace ppgate
