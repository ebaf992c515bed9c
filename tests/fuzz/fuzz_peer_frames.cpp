// Fuzz target: what a peer sends, as peer_channel reads it: frames under the handshake's size
// limit, each parsed as a message and, by type, as a hello, challenge, welcome or result; and
// the same bytes checked as authenticated frames of an established link.
#include "frame.hpp"
#include "job.hpp"
#include "peer/peer_protocol.hpp"

#include <cstddef>
#include <cstdint>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string nonce_d(64, 'd'), nonce_a(64, 'a');
  peer::frame_authenticator incoming("fuzz-secret", nonce_d, nonce_a, "dialer");
  frame_reader reader(peer::max_handshake_frame);
  try {
    reader.feed(reinterpret_cast<const char*>(data), size);
    std::string_view frame;
    while (reader.next(frame)) {
      peer::message m{};
      if (peer::parse_message(frame, m)) {
        switch (m.type) {
          case peer::msg::hello: (void)peer::parse_hello(m.payload); break;
          case peer::msg::challenge: (void)peer::parse_challenge(m.payload); break;
          case peer::msg::welcome: (void)peer::parse_welcome(m.payload); break;
          case peer::msg::result: (void)parse_reported_end(m.payload); break;
          default: break;
        }
      }
      peer::message opened{};
      (void)incoming.open(frame, opened);
    }
  } catch (const frame_error&) {
    // an oversized length: the connection is closed
  }
  return 0;
}
