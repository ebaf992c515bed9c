#include "peer_server.hpp"

#include "acceptor.hpp"
#include "log.hpp"
#include "serving_channel.hpp"

#include <boost/asio/this_coro.hpp>

#include <utility>

namespace ppgate {


// One accepted peer: the acceptor's side of the handshake, then its jobs; or, for a node that
// joins, the handshake only: the link then goes to the node's sending side (on_join).
class peer_server::connection : public serving_channel {
 public:
  connection(std::unique_ptr<peer_stream> s, peer_server& server)
      : serving_channel(std::move(s), server.settings_, server.sched_), server_(server) {}

  net::awaitable<void> serve() {
    // Counted as handshaking until authenticated or gone, TLS handshake included.
    struct handshake_count {
      std::size_t& n;
      bool counted = true;
      explicit handshake_count(std::size_t& c) : n(c) { ++n; }
      void done() { if (std::exchange(counted, false)) --n; }
      ~handshake_count() { done(); }
    } handshaking(server_.handshaking_);
    // The whole handshake, TLS included, has one deadline.
    auto self = shared_from_this();
    net::steady_timer deadline(co_await net::this_coro::executor, settings_.handshake_timeout);
    deadline.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->close();
    });
    try {
      peer_name_ = stream_->socket().remote_endpoint().address().to_string() + ":" +
                   std::to_string(stream_->socket().remote_endpoint().port());
    } catch (const std::exception&) {
    }
    auto [tls_ec, tls_why] = co_await stream_->handshake(/*as_server=*/true);
    if (tls_ec) {
      log::warn("peer ", peer_name_, ": ", tls_why);
      close();
      co_return;
    }
    const bool authenticated = !closed() && co_await authenticate();
    handshaking.done();
    deadline.cancel();
    if (!authenticated || closed()) {
      close();
      co_return;
    }
    ++settings_.counters.established;
    if (joining_) {
      server_.on_join_(*this);  // takes the link over
      co_return;
    }
    log::info("peer ", peer_name_, " connected");
    co_await serve_jobs();
  }

 private:
  net::awaitable<bool> refuse(const std::string& why) {
    log::warn("peer ", peer_name_, " refused: ", why);
    send(peer::msg::refused, why);
    co_await flush();
    co_return false;
  }

  net::awaitable<bool> authenticate() {
    std::string storage;
    auto hello = co_await receive(storage);
    if (!hello || hello->type != peer::msg::hello) co_return co_await refuse("expected a hello");
    const auto h = peer::parse_hello(hello->payload);
    if (!h || h->magic != peer::magic) co_return co_await refuse("not a ppgate peer");
    if (h->version != peer::protocol_version)
      co_return co_await refuse("protocol version mismatch: this node speaks version " +
                                std::to_string(peer::protocol_version) + ", the peer speaks version " +
                                std::to_string(h->version));
    if (h->nonce.size() != 64) co_return co_await refuse("a malformed hello");
    const std::string& nonce_d = h->nonce;
    if (!h->name.empty()) peer_name_ = h->name;
    joining_ = h->join;
    const std::string nonce_a = peer::make_nonce();
    send(peer::msg::challenge, std::to_string(peer::protocol_version) + " " + nonce_a + " " +
                                   peer::proof_of(settings_.secret, "acceptor", nonce_d, nonce_a));
    if (!co_await flush()) co_return false;
    auto proof = co_await receive(storage);
    if (proof && proof->type == peer::msg::refused) {
      // The dialer found that our proof does not match its secret.
      log::warn("peer ", peer_name_, " refused the handshake: ", proof->payload,
                " (authentication failed: the secrets differ)");
      ++settings_.counters.auth_failures;
      co_return false;
    }
    if (!proof || proof->type != peer::msg::proof) co_return false;
    const std::string expected = peer::proof_of(settings_.secret, "dialer", nonce_a, nonce_d);
    if (!peer::equal_in_constant_time(proof->payload, expected)) {
      ++settings_.counters.auth_failures;
      co_return co_await refuse("authentication failed: the peer does not hold this cluster's secret");
    }
    authenticate_frames(nonce_d, nonce_a, /*this_is_dialer=*/false);
    if (joining_ && !server_.on_join_)
      co_return co_await refuse("this node takes no joining nodes");
    send(peer::msg::welcome, std::to_string(server_.pool_.size()) + " " + server_.pool_.python_version() +
                                  " " + settings_.name);
    co_return co_await flush();
  }

  peer_server& server_;
  bool joining_ = false;  // the dialer offers its workers: the link goes to on_join_
};

peer_server::peer_server(net::any_io_executor ex, scheduler& sched, local_pool& pool,
                         const peer_settings& settings, join_handler on_join)
    : ex_(ex), sched_(sched), pool_(pool), settings_(settings), on_join_(std::move(on_join)), acceptor_(ex) {
  if (settings_.tls.enabled()) tls_ = make_tls_context(settings_.tls, /*server=*/true);
}

peer_server::~peer_server() { stop(); }

void peer_server::listen(const net::ip::tcp::endpoint& endpoint) {
  port_ = bind_and_listen(acceptor_, endpoint);
  net::co_spawn(ex_, accept_loop(), log::on_failure("peer listener"));
}

net::awaitable<void> peer_server::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow_awaitable);
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      net::steady_timer pause(ex_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_nothrow_awaitable);
      continue;
    }
    boost::system::error_code ignored;
    if (handshaking_ >= max_handshaking) {
      log::debug("peer port: ", handshaking_, " connections are in their handshake; closing a new one");
      socket.close(ignored);
      continue;
    }
    socket.set_option(net::ip::tcp::no_delay(true), ignored);
    auto stream = tls_ ? std::make_unique<peer_stream>(std::move(socket), *tls_)
                       : std::make_unique<peer_stream>(std::move(socket));
    auto c = std::make_shared<connection>(std::move(stream), *this);
    std::erase_if(connections_, [](const auto& w) { return w.expired(); });
    connections_.push_back(c);
    net::co_spawn(ex_, [c]() { return c->serve(); }, log::on_failure("peer connection"));
  }
}

void peer_server::capacity_changed() {
  for (const auto& w : connections_)
    if (auto c = w.lock(); c && !c->closed()) c->capacity_changed(pool_.size());
}

std::size_t peer_server::drain(std::string_view why) {
  std::size_t handed = 0;
  for (const auto& w : connections_)
    if (auto c = w.lock()) handed += c->drain(why);
  return handed;
}

void peer_server::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  for (const auto& w : connections_)
    if (auto c = w.lock()) c->close();
}

}  // namespace ppgate
