// The HTTP message types the gateway uses.
#pragma once

#include "net.hpp"

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string_view>

namespace ppgate {

namespace http = beast::http;
using http_request = http::request<http::string_body>;
using http_response = http::response<http::string_body>;

// A response with a JSON (or other) body and the headers every ppgate response carries.
http_response make_response(http::status status, std::string body, unsigned version,
                            std::string_view content_type = "application/json");
http_response make_error(http::status status, std::string_view message, unsigned version);

// The decorator of both WebSocket handshakes: ppgate's Server header, and a refused handshake's
// reason as a JSON error body like every other error's.
void decorate_websocket_handshake(http_response& res);

// The bounds every HTTP connection and WebSocket session keeps (docs/cli.md).
struct http_limits {
  std::size_t max_body_bytes = 64u * 1024 * 1024;  // also a WebSocket message's
  std::size_t max_header_bytes = 16 * 1024;
  std::chrono::seconds idle_timeout{60};
  std::chrono::seconds header_timeout{10};  // a request head, once begun, must be whole within this
};

struct target_parts {
  std::string_view path;
  std::string_view query;
};

// "/v1/jobs?wait=5" -> {"/v1/jobs", "wait=5"}
target_parts split_target(std::string_view target);

// The raw value of `name` in a query string ("" for a bare name), if present.
std::optional<std::string_view> query_param(std::string_view query, std::string_view name);
// The same, percent-decoded ('+' is a space), for values that are text: a group's name. Throws
// std::invalid_argument for a malformed escape.
std::optional<std::string> query_text(std::string_view query, std::string_view name);

}  // namespace ppgate
