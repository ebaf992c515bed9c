#include "request_head.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <string>

namespace ppgate {

std::string_view host_name(std::string_view host) {
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(1, close - 1);
  }
  return host.substr(0, host.rfind(':'));
}

bool is_loopback_name(std::string_view name) {
  if (name == "localhost" || name == "::1") return true;
  boost::system::error_code ec;
  const auto address = net::ip::make_address(std::string(name), ec);
  return !ec && address.is_loopback();
}

bool valid_websocket_key(std::string_view key) {
  if (key.size() != 24 || !key.ends_with("==")) return false;
  return std::all_of(key.begin(), key.end() - 2, [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
  });
}

std::optional<http_response> refuse_request_head(const http_request& req, std::string_view path,
                                                 const access_policy& policy) {
  const auto host = req[http::field::host];
  // One Host, one name: "127.0.0.1:P, evil.example" or a second Host header would let a rebinding
  // browser or a confused proxy pass the loopback check with a name it did not mean.
  const auto hosts = req.equal_range(http::field::host);
  if (std::distance(hosts.first, hosts.second) > 1 ||
      host.find_first_of(", \t") != std::string_view::npos)
    return make_error(http::status::bad_request, "the request must carry exactly one Host header with one name",
                      req.version());
  if (policy.secret.empty() && !policy.insecure && !is_loopback_name(host_name(host))) {
    // Without a secret the node trusts loopback only; a foreign Host header means a browser
    // was pointed here through DNS rebinding.
    return make_error(http::status::forbidden, "this node accepts only loopback host names", req.version());
  }
  // A WebSocket handshake is a GET, but a session submits jobs: it is held to the same rule.
  const bool changes_state = (req.method() != http::verb::get && req.method() != http::verb::head) ||
                             beast::websocket::is_upgrade(req);
  if (changes_state) {
    // Browsers send Origin on cross-site requests; only same-origin pages may change state.
    const auto origin = req[http::field::origin];
    const auto fetch_site = req["Sec-Fetch-Site"];
    const bool cross_site = fetch_site == "cross-site" || fetch_site == "same-site";
    // The node speaks plain HTTP: its own pages have an http:// origin, nothing else.
    const bool foreign_origin = !origin.empty() && origin != "http://" + std::string(host);
    if (cross_site || foreign_origin)
      return make_error(http::status::forbidden, "cross-origin requests may not change state", req.version());
  }
  if (policy.secret.empty() || path == "/healthz" || path == "/") return std::nullopt;
  const auto auth = req[http::field::authorization];
  constexpr std::string_view scheme = "Bearer ";
  const bool ok = auth.size() == scheme.size() + policy.secret.size() && auth.starts_with(scheme) &&
                  CRYPTO_memcmp(auth.data() + scheme.size(), policy.secret.data(), policy.secret.size()) == 0;
  if (ok) return std::nullopt;
  auto res = make_error(http::status::unauthorized,
                        auth.empty() ? "this node requires 'Authorization: Bearer <token>'"
                                     : "invalid bearer token",
                        req.version());
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

}  // namespace ppgate
