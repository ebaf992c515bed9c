// Fuzz target: an HTTP request head, as the gateway reads it (Beast's parser, limits as
// configured by default) and then judges it on its head alone (request_head.hpp).
#include "request_head.hpp"

#include <boost/beast/http/parser.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include <cstddef>
#include <cstdint>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  http::request_parser<http::string_body> parser;
  parser.header_limit(16 * 1024);
  parser.body_limit(64 * 1024);
  boost::system::error_code ec;
  parser.put(net::buffer(data, size), ec);
  if (!parser.is_header_done()) return 0;
  const http_request& head = parser.get();
  const auto [path, query] = split_target(head.target());
  (void)query_param(query, "wait");
  (void)query_param(query, "access_token");
  for (const access_policy& policy : {access_policy{"", false}, access_policy{"s3cret-token", false},
                                      access_policy{"", true}})
    (void)refuse_request_head(head, path, policy);
  if (beast::websocket::is_upgrade(head)) (void)valid_websocket_key(head["Sec-WebSocket-Key"]);
  return 0;
}
