// One authenticated peer connection, either role: a reader coroutine, with writes and heartbeats
// driven by completion handlers, over a peer_stream. Messages are queued with send() and go out in
// as few writes as possible; only one write is in flight. After the handshake every message is
// authenticated (peer::frame_authenticator). A peer silent for `missed_heartbeats` intervals is
// cut off.
// Owned through shared_ptr: run() holds a reference until the connection ends.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "frame.hpp"
#include "peer_protocol.hpp"
#include "peer_settings.hpp"
#include "peer_stream.hpp"
#include "scheduler.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace ppgate {

class peer_channel : public std::enable_shared_from_this<peer_channel> {
 public:
  peer_channel(std::unique_ptr<peer_stream> stream, const peer_settings& settings);
  // Takes over `authenticated`'s connection once its handshake is over (nothing of it in flight):
  // a node that accepted a joining node hands the link from its serving side to its sending side.
  // `authenticated` is left closed, without a stream.
  explicit peer_channel(peer_channel& authenticated);
  virtual ~peer_channel() = default;

  void send(peer::msg type, std::string_view payload);
  void send_frames(std::string_view frames);  // messages already framed (without tags)
  void close();
  bool closed() const { return closed_; }
  const std::string& peer_name() const { return peer_name_; }

 protected:
  // For the handshake, before run(): the next message (payload copied into `storage`), or
  // nullopt when the connection ends or `handshake_timeout` passes.
  net::awaitable<std::optional<peer::message>> receive(std::string& storage);
  net::awaitable<bool> flush();  // writes what send() queued; false when the connection is gone
  // Once both proofs are checked: every later message sent carries a tag, every later message
  // received must carry a valid one (the first that does not ends the connection), and frames may
  // be as large as max_frame_size (until then: peer::max_handshake_frame).
  void authenticate_frames(std::string_view nonce_d, std::string_view nonce_a, bool this_is_dialer);
  // The dialer's half of the handshake, TLS included, with a hello that offers this node's
  // workers when `join`: the acceptor's welcome, or nullopt with `why` (and `refused` when the
  // acceptor turned us down or does not hold the secret, which will not fix itself soon).
  net::awaitable<std::optional<peer::welcome>> dial_handshake(bool join, std::string& why, bool& refused);
  // After the handshake: serves until the connection ends, then calls on_closed().
  net::awaitable<void> run();

  // A message of the link's role (ping, pong and refused are answered here, for both).
  virtual void on_message(const peer::message& m) = 0;
  virtual void on_closed() {}

  std::unique_ptr<peer_stream> stream_;
  const peer_settings& settings_;
  std::string peer_name_;

 private:
  net::awaitable<bool> read_more();
  void dispatch(const peer::message& m);
  net::awaitable<void> read_loop();
  void write_next();      // starts writing the outbox unless a write is in flight
  void heartbeat();       // one tick: cut off a silent peer, or ping it

  // Opens a received frame: checks and strips its tag once frames are authenticated.
  bool open(std::string_view frame, peer::message& m);

  frame_reader reader_{peer::max_handshake_frame};
  std::optional<peer::frame_authenticator> sending_auth_, receiving_auth_;
  std::string outbox_, writing_;
  bool write_in_flight_ = false;
  bool serving_ = false;  // run() has started: writes go out as they are queued
  std::optional<net::steady_timer> ticker_;
  steady_clock::time_point last_heard_ = steady_clock::now();
  bool closed_ = false;
};

}  // namespace ppgate
