#include "http.hpp"

#include "json_writer.hpp"

#include <charconv>
#include <stdexcept>

namespace ppgate {

http_response make_response(http::status status, std::string body, unsigned version,
                            std::string_view content_type) {
  http_response res{status, version};
  res.set(http::field::server, "ppgate");
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  return res;
}

http_response make_error(http::status status, std::string_view message, unsigned version) {
  return make_response(status, json_error_body(message), version);
}

void decorate_websocket_handshake(http_response& res) {
  res.set(http::field::server, "ppgate");
  if (res.result() == http::status::switching_protocols) return;
  res.body() = json_error_body("WebSocket handshake refused: " + res.body());
  res.set(http::field::content_type, "application/json");
  res.prepare_payload();
}

target_parts split_target(std::string_view target) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

std::optional<std::string_view> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<std::string> query_text(std::string_view query, std::string_view name) {
  const auto raw = query_param(query, name);
  if (!raw) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < raw->size(); ++i) {
    const char c = (*raw)[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      unsigned value = 0;
      if (i + 2 >= raw->size()) throw std::invalid_argument("a truncated %-escape");
      auto [p, ec] = std::from_chars(raw->data() + i + 1, raw->data() + i + 3, value, 16);
      if (ec != std::errc() || p != raw->data() + i + 3) throw std::invalid_argument("a malformed %-escape");
      out += static_cast<char>(value);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace ppgate
