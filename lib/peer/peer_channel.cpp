#include "peer_channel.hpp"

#include "log.hpp"

#include <boost/asio/this_coro.hpp>

namespace ppgate {

peer_channel::peer_channel(std::unique_ptr<peer_stream> stream, const peer_settings& settings)
    : stream_(std::move(stream)), settings_(settings) {}

peer_channel::peer_channel(peer_channel& authenticated)
    : std::enable_shared_from_this<peer_channel>(),
      stream_(std::move(authenticated.stream_)),
      settings_(authenticated.settings_),
      peer_name_(authenticated.peer_name_),
      reader_(std::move(authenticated.reader_)),
      sending_auth_(std::move(authenticated.sending_auth_)),
      receiving_auth_(std::move(authenticated.receiving_auth_)),
      outbox_(std::move(authenticated.outbox_)) {
  authenticated.closed_ = true;
}

void peer_channel::send(peer::msg type, std::string_view payload) {
  if (sending_auth_)
    sending_auth_->append_message(outbox_, type, payload);
  else
    peer::append_message(outbox_, type, payload);
  if (serving_) write_next();
}

void peer_channel::send_frames(std::string_view frames) {
  if (!sending_auth_) {
    outbox_.append(frames);
  } else {
    // Each message gets its tag.
    frame_reader split;
    split.feed(frames.data(), frames.size());
    std::string_view frame;
    peer::message m;
    while (split.next(frame))
      if (peer::parse_message(frame, m)) sending_auth_->append_message(outbox_, m.type, m.payload);
  }
  if (serving_) write_next();
}

void peer_channel::authenticate_frames(std::string_view nonce_d, std::string_view nonce_a, bool this_is_dialer) {
  const std::string_view us = this_is_dialer ? "dialer" : "acceptor";
  const std::string_view them = this_is_dialer ? "acceptor" : "dialer";
  sending_auth_.emplace(settings_.secret, nonce_d, nonce_a, us);
  receiving_auth_.emplace(settings_.secret, nonce_d, nonce_a, them);
  reader_.set_limit(max_frame_size);
}

bool peer_channel::open(std::string_view frame, peer::message& m) {
  if (!receiving_auth_) return peer::parse_message(frame, m);
  if (receiving_auth_->open(frame, m)) return true;
  ++settings_.counters.auth_failures;
  log::warn("peer ", peer_name_, " sent a message that fails authentication (forged, replayed or "
            "relayed); closing the link");
  close();
  return false;
}

void peer_channel::close() {
  if (closed_) return;
  closed_ = true;
  if (stream_) stream_->close();
  if (ticker_) ticker_->cancel();
}

// Writes and heartbeats use completion handlers rather than coroutines racing the reader: with
// g++ 12, the coroutine versions were resumed after they had finished.
void peer_channel::write_next() {
  if (write_in_flight_ || outbox_.empty() || closed_) return;
  writing_.swap(outbox_);
  outbox_.clear();
  write_in_flight_ = true;
  stream_->async_write(net::buffer(writing_),
                       [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                         self->write_in_flight_ = false;
                         self->writing_.clear();
                         if (ec) {
                           self->close();
                           return;
                         }
                         self->write_next();
                       });
}

void peer_channel::heartbeat() {
  if (closed_) return;
  const auto silence_limit = settings_.heartbeat * settings_.missed_heartbeats;
  if (steady_clock::now() - last_heard_ > silence_limit) {
    log::warn("peer ", peer_name_, " has been silent for ",
              std::chrono::duration_cast<std::chrono::milliseconds>(silence_limit).count(),
              " ms; closing the link");
    close();
    return;
  }
  send(peer::msg::ping, {});
  ticker_->expires_after(settings_.heartbeat);
  ticker_->async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->heartbeat();
  });
}

net::awaitable<bool> peer_channel::read_more() {
  char buf[64 * 1024];
  auto [ec, n] = co_await stream_->read_some(net::buffer(buf));
  if (ec) co_return false;
  reader_.feed(buf, n);
  last_heard_ = steady_clock::now();
  co_return true;
}

net::awaitable<std::optional<peer::message>> peer_channel::receive(std::string& storage) {
  // A watchdog closes the stream if the other side stalls the handshake.
  auto self = shared_from_this();
  net::steady_timer watchdog(co_await net::this_coro::executor, settings_.handshake_timeout);
  watchdog.async_wait([self](boost::system::error_code ec) {
    if (!ec) self->stream_->close();
  });
  for (;;) {
    std::string_view frame;
    try {
      if (reader_.next(frame)) {
        storage.assign(frame);
        peer::message m;
        if (!open(storage, m)) co_return std::nullopt;
        co_return m;
      }
    } catch (const frame_error&) {
      co_return std::nullopt;
    }
    if (!co_await read_more()) co_return std::nullopt;
  }
}

net::awaitable<bool> peer_channel::flush() {
  writing_.swap(outbox_);
  outbox_.clear();
  auto [ec, n] = co_await stream_->write(net::buffer(writing_));
  writing_.clear();
  co_return !ec;
}

net::awaitable<std::optional<peer::welcome>> peer_channel::dial_handshake(bool join, std::string& why,
                                                                         bool& refused) {
  auto [tls_ec, tls_why] = co_await stream_->handshake(/*as_server=*/false);
  if (tls_ec) {
    why = tls_why;
    co_return std::nullopt;
  }
  const std::string nonce_d = peer::make_nonce();
  send(peer::msg::hello, std::string(peer::magic) + " " + std::to_string(peer::protocol_version) + " " +
                             nonce_d + " " + settings_.name + (join ? " join" : ""));
  if (!co_await flush()) {
    why = "the connection closed during the handshake";
    co_return std::nullopt;
  }
  std::string storage;
  auto challenge = co_await receive(storage);
  if (!challenge) {
    why = "no answer to the handshake";
    co_return std::nullopt;
  }
  if (challenge->type == peer::msg::refused) {
    why = "the peer refused the connection: " + std::string(challenge->payload);
    refused = true;
    co_return std::nullopt;
  }
  const auto c = peer::parse_challenge(challenge->payload);
  const int version = c ? c->version : 0;
  if (challenge->type != peer::msg::challenge || version != peer::protocol_version) {
    why = "protocol version mismatch: this node speaks version " + std::to_string(peer::protocol_version) +
          ", the peer speaks version " + std::to_string(version);
    refused = true;
    co_return std::nullopt;
  }
  if (!peer::equal_in_constant_time(c->proof, peer::proof_of(settings_.secret, "acceptor", nonce_d, c->nonce))) {
    why = "authentication failed: the peer does not hold this cluster's secret";
    ++settings_.counters.auth_failures;
    refused = true;
    send(peer::msg::refused, why);
    co_await flush();
    co_return std::nullopt;
  }
  send(peer::msg::proof, peer::proof_of(settings_.secret, "dialer", c->nonce, nonce_d));
  if (!co_await flush()) {
    why = "the connection closed during the handshake";
    co_return std::nullopt;
  }
  authenticate_frames(nonce_d, c->nonce, /*this_is_dialer=*/true);
  auto welcome = co_await receive(storage);
  if (!welcome || welcome->type != peer::msg::welcome) {
    refused = welcome && welcome->type == peer::msg::refused;
    // The acceptor found our proof wrong: the secrets differ.
    if (refused && welcome->payload.starts_with("authentication failed")) ++settings_.counters.auth_failures;
    why = refused ? "the peer refused the connection: " + std::string(welcome->payload) : "no welcome from the peer";
    co_return std::nullopt;
  }
  auto w = peer::parse_welcome(welcome->payload);
  if (!w) why = "a malformed welcome";
  co_return w;
}

net::awaitable<void> peer_channel::run() {
  auto self = shared_from_this();
  ticker_.emplace(co_await net::this_coro::executor, settings_.heartbeat);
  ticker_->async_wait([self](boost::system::error_code ec) {
    if (!ec) self->heartbeat();
  });
  serving_ = true;
  write_next();
  last_heard_ = steady_clock::now();
  co_await read_loop();
  on_closed();
}

void peer_channel::dispatch(const peer::message& m) {
  // Liveness and a goodbye mean the same to either role; the rest is the role's.
  switch (m.type) {
    case peer::msg::ping: send(peer::msg::pong, {}); break;
    case peer::msg::pong: break;
    case peer::msg::refused:
      log::warn("peer ", peer_name_, " closed the link: ", m.payload);
      close();
      break;
    default: on_message(m); break;
  }
}

net::awaitable<void> peer_channel::read_loop() {
  // Messages that arrived with the end of the handshake are already buffered: they go first.
  for (;;) {
    std::string_view frame;
    try {
      while (!closed_ && reader_.next(frame)) {
        peer::message m;
        if (open(frame, m)) dispatch(m);
      }
    } catch (const frame_error& e) {
      log::warn("peer ", peer_name_, " sent a bad frame: ", e.what());
      break;
    }
    if (closed_) break;
    if (!co_await read_more()) break;
  }
  close();
}

}  // namespace ppgate
