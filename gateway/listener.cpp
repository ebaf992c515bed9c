#include "listener.hpp"

#include "acceptor.hpp"
#include "json_writer.hpp"
#include "log.hpp"

#include <fcntl.h>

namespace ppgate {

listener::listener(net::any_io_executor ex, std::size_t max_connections, http_services services)
    : ex_(ex),
      max_connections_(max_connections),
      services_(std::move(services)),
      acceptor_(ex),
      connections_(std::make_shared<connection_tracker>(services_.seen)) {}

void listener::listen(const net::ip::tcp::endpoint& endpoint) {
  port_ = bind_and_listen(acceptor_, endpoint);
  net::co_spawn(ex_, accept_loop(), log::on_failure("listener"));
}

void listener::listen_on(int fd, const net::ip::tcp::endpoint& endpoint) {
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // inherited: the workers this node starts must not keep it
  acceptor_.assign(endpoint.protocol(), fd);
  port_ = endpoint.port();
  net::co_spawn(ex_, accept_loop(), log::on_failure("listener"));
}

void listener::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

net::awaitable<void> listener::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow_awaitable);
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      // Out of file descriptors and the like: back off instead of spinning.
      log::warn("accept: ", ec.message());
      net::steady_timer pause(ex_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_nothrow_awaitable);
      continue;
    }
    boost::system::error_code no_peer;
    const net::ip::address from = socket.remote_endpoint(no_peer).address();
    if (no_peer) continue;  // it hung up already
    if (connections_->open() >= max_connections_ && !connections_->make_room_for(from)) {
      // Answer right away and close; a fresh socket's send buffer takes this without blocking.
      static const std::string busy = [] {
        const std::string body = json_error_body("too many connections; retry later");
        return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
               "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
      }();
      boost::system::error_code ignored;
      socket.non_blocking(true, ignored);
      socket.write_some(net::buffer(busy), ignored);
      socket.close(ignored);
      continue;
    }
    boost::system::error_code ignored;
    socket.set_option(net::ip::tcp::no_delay(true), ignored);
    net::co_spawn(ex_, run_http_session(std::move(socket), from, connections_, services_),
                  log::on_failure("http session"));
  }
}

}  // namespace ppgate
