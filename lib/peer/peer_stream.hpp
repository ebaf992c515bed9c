// A peer connection's byte stream: TCP, or TLS over TCP (OpenSSL through Asio).
// One read and one write may be in flight at a time. Distinct objects: safe. Shared: unsafe.
#pragma once

#include "net.hpp"
#include "peer_settings.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <variant>

namespace ppgate {

// Throws std::runtime_error naming the file that could not be used.
std::shared_ptr<net::ssl::context> make_tls_context(const tls_config& cfg, bool server);

class peer_stream;

// Resolves and connects to host:port (TCP_NODELAY; TLS over it with `tls`, its handshake not done
// yet): the stream, or null with `error` saying why.
net::awaitable<std::unique_ptr<peer_stream>> dial_peer(net::any_io_executor ex, const std::string& host,
                                                       std::uint16_t port, net::ssl::context* tls,
                                                       std::string& error);

class peer_stream {
 public:
  explicit peer_stream(net::ip::tcp::socket socket);
  peer_stream(net::ip::tcp::socket socket, net::ssl::context& tls);

  // The TLS handshake (nothing without TLS). Returns an error and a readable reason.
  net::awaitable<std::tuple<boost::system::error_code, std::string>> handshake(bool as_server);
  net::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_some(net::mutable_buffer b);
  net::awaitable<std::tuple<boost::system::error_code, std::size_t>> write(net::const_buffer b);
  // The same with a completion handler: void(error_code, std::size_t).
  template <class Handler>
  void async_write(net::const_buffer b, Handler&& handler) {
    std::visit([&](auto& s) { net::async_write(s, b, std::forward<Handler>(handler)); }, s_);
  }
  void close();
  net::ip::tcp::socket& socket();

 private:
  std::variant<net::ip::tcp::socket, net::ssl::stream<net::ip::tcp::socket>> s_;
};

}  // namespace ppgate
