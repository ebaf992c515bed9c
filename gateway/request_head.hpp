// Decisions taken on a request's head alone, before any of its body is read: who may ask
// (Host, Origin, the bearer token) and whether a WebSocket handshake is well formed.
// Pure functions of their arguments: the HTTP-head fuzz target drives them directly.
#pragma once

#include "http.hpp"

#include <optional>
#include <string_view>

namespace ppgate {

struct access_policy {
  std::string_view secret;  // the bearer token clients must present; empty for none
  bool insecure = false;    // --insecure: no secret, and any Host name accepted
};

// The refusal (400, 401 or 403, with a JSON error) for a request that may not proceed, or
// nullopt. `path` is the target's path (split_target).
std::optional<http_response> refuse_request_head(const http_request& head, std::string_view path,
                                                 const access_policy& policy);

// Host header without the port: "localhost:8080" -> "localhost", "[::1]:80" -> "::1".
std::string_view host_name(std::string_view host);
bool is_loopback_name(std::string_view name);

// RFC 6455: the key is 16 bytes, base64-encoded: 22 characters of the alphabet and "==".
bool valid_websocket_key(std::string_view key);

}  // namespace ppgate
