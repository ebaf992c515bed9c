#include "peer_stream.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <openssl/err.h>

#include <stdexcept>

namespace ppgate {

std::shared_ptr<net::ssl::context> make_tls_context(const tls_config& cfg, bool server) {
  auto ctx = std::make_shared<net::ssl::context>(server ? net::ssl::context::tls_server
                                                        : net::ssl::context::tls_client);
  ctx->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                   net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                   net::ssl::context::no_tlsv1_1);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(cfg.cert_file, ec);
  if (ec) throw std::runtime_error("--tls-cert: cannot use '" + cfg.cert_file + "': " + ec.message());
  ctx->use_private_key_file(cfg.key_file, net::ssl::context::pem, ec);
  if (ec) throw std::runtime_error("--tls-key: cannot use '" + cfg.key_file + "': " + ec.message());
  if (!cfg.ca_file.empty()) {
    ctx->load_verify_file(cfg.ca_file, ec);
    if (ec) throw std::runtime_error("--tls-ca: cannot use '" + cfg.ca_file + "': " + ec.message());
    ctx->set_verify_mode(net::ssl::verify_peer | net::ssl::verify_fail_if_no_peer_cert);
  } else {
    ctx->set_verify_mode(net::ssl::verify_none);
  }
  return ctx;
}

net::awaitable<std::unique_ptr<peer_stream>> dial_peer(net::any_io_executor ex, const std::string& host,
                                                       std::uint16_t port, net::ssl::context* tls,
                                                       std::string& error) {
  net::ip::tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(host, std::to_string(port), use_nothrow_awaitable);
  if (rec) {
    error = "cannot resolve " + host + ": " + rec.message();
    co_return nullptr;
  }
  net::ip::tcp::socket socket(ex);
  auto [cec, endpoint] = co_await net::async_connect(socket, endpoints, use_nothrow_awaitable);
  if (cec) {
    error = "cannot connect: " + cec.message();
    co_return nullptr;
  }
  boost::system::error_code ignored;
  socket.set_option(net::ip::tcp::no_delay(true), ignored);
  std::unique_ptr<peer_stream> stream = tls ? std::make_unique<peer_stream>(std::move(socket), *tls)
                                            : std::make_unique<peer_stream>(std::move(socket));
  co_return stream;
}

peer_stream::peer_stream(net::ip::tcp::socket socket) : s_(std::move(socket)) {}

peer_stream::peer_stream(net::ip::tcp::socket socket, net::ssl::context& tls)
    : s_(std::in_place_type<net::ssl::stream<net::ip::tcp::socket>>, std::move(socket), tls) {}

net::ip::tcp::socket& peer_stream::socket() {
  if (auto* plain = std::get_if<net::ip::tcp::socket>(&s_)) return *plain;
  return std::get<net::ssl::stream<net::ip::tcp::socket>>(s_).next_layer();
}

net::awaitable<std::tuple<boost::system::error_code, std::string>> peer_stream::handshake(bool as_server) {
  auto* tls = std::get_if<net::ssl::stream<net::ip::tcp::socket>>(&s_);
  if (tls == nullptr) co_return std::tuple{boost::system::error_code{}, std::string{}};
  auto [ec] = co_await tls->async_handshake(as_server ? net::ssl::stream_base::server
                                                      : net::ssl::stream_base::client,
                                            use_nothrow_awaitable);
  std::string why;
  if (ec) {
    why = "TLS handshake failed: " + ec.message();
    if (ec.category() == net::error::get_ssl_category()) {
      char buf[256];
      ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
      why += " (" + std::string(buf) + ")";
    }
  }
  co_return std::tuple{ec, why};
}

// (Results are stored before co_return: `co_return co_await ...` is miscompiled by g++ 12.)
net::awaitable<std::tuple<boost::system::error_code, std::size_t>> peer_stream::read_some(net::mutable_buffer b) {
  std::tuple<boost::system::error_code, std::size_t> result;
  if (auto* tls = std::get_if<net::ssl::stream<net::ip::tcp::socket>>(&s_))
    result = co_await tls->async_read_some(b, use_nothrow_awaitable);
  else
    result = co_await std::get<net::ip::tcp::socket>(s_).async_read_some(b, use_nothrow_awaitable);
  co_return result;
}

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> peer_stream::write(net::const_buffer b) {
  std::tuple<boost::system::error_code, std::size_t> result;
  if (auto* tls = std::get_if<net::ssl::stream<net::ip::tcp::socket>>(&s_))
    result = co_await net::async_write(*tls, b, use_nothrow_awaitable);
  else
    result = co_await net::async_write(std::get<net::ip::tcp::socket>(s_), b, use_nothrow_awaitable);
  co_return result;
}

void peer_stream::close() {
  boost::system::error_code ignored;
  socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
  socket().close(ignored);
}

}  // namespace ppgate
