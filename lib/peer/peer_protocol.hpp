// The peer protocol's wire format and authentication (docs/peers.md).
//
// A message is one frame (lib/frame.hpp) whose payload starts with a type byte. Each message goes
// out in one write, on a socket with TCP_NODELAY.
//
// Handshake, dialer D and acceptor A, both holding the cluster secret:
//   D -> A  hello      "PPGATE <version> <nonce_d> <name of D>[ join]"
//   A -> D  challenge  "<version> <nonce_a> <HMAC(secret, "acceptor" nonce_d nonce_a)>"
//   D -> A  proof      "<HMAC(secret, "dialer" nonce_a nonce_d)>"
//   A -> D  welcome    "<slots of A> <Python version of A's workers> <name of A>"
// or `refused` with a reason at any step. Usually D sends jobs to A's workers; a hello ending
// " join" offers D's workers to A instead (ppgate serve --join): D then sends its own welcome,
// and A sends the jobs. Nonces are 32 fresh random bytes from each side, so
// the secret never crosses the wire and an answer recorded from one handshake fails in the next.
//
// From the welcome on, every message in both directions is authenticated (frame_authenticator):
// it ends with the first 16 bytes of HMAC-SHA256 under a session key derived from the secret and
// both nonces, over the sender's role, a per-direction sequence number and the message. Whoever
// relays a handshake between two real nodes (a man in the middle) learns no key: it can neither
// inject, alter, replay, reorder nor reflect a message; the first bad one ends the connection.
#pragma once

#include "frame.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

typedef struct evp_md_ctx_st EVP_MD_CTX;  // OpenSSL's, as <openssl/types.h> declares it

namespace ppgate::peer {

// 3: authenticated frames; the welcome names the Python version. 4: a refused job ends `refused`.
// 5: run_attached, result_attached, "results_in_parts". 6: a hello may offer to join.
inline constexpr std::uint16_t protocol_version = 6;
inline constexpr std::string_view magic = "PPGATE";

enum class msg : std::uint8_t {
  hello = 1,
  challenge = 2,
  proof = 3,
  welcome = 4,
  refused = 5,   // text: why; the connection closes after it
  capacity = 6,  // "<slots>": the acceptor's local pool was resized
  run = 7,       // a batch of jobs in the session format (JSON array with tag and fn_id)
  result = 8,    // "<tag> <done|failed|refused|handed_back|cancelled|lost> <run seconds>\n<outcome members>"
  cancel = 9,    // "<tag>"
  ping = 10,
  pong = 11,
  // A batch whose pickles are parts of attachments: a binary message (shared_memory.hpp).
  run_attached = 12,
  // A result whose pickle is parts of attachments: [length][a result's text][attachments].
  result_attached = 13,
};

// The result state of a job the acceptor refused before running it (a batch that did not parse):
// the job fails, and a function it defined is not known to the acceptor either.
inline constexpr std::string_view refused_result = "refused";
// The state of a job the acceptor gives back without running it (it is draining): the dialer runs
// it elsewhere, counting no attempt, and a function its batch defined is not known to be kept.
inline constexpr std::string_view handed_back_result = "handed_back";

void append_message(std::string& out, msg type, std::string_view payload);

struct message {
  msg type;
  std::string_view payload;
};

// Splits a received payload into type and body; false for an empty one.
bool parse_message(std::string_view frame, message& out);

// The handshake's messages, as parsed from their payloads (words separated by single spaces;
// a name may be empty). Parsers return nullopt for a payload that is not of that form.
struct hello {
  std::string magic;     // must be peer::magic
  int version = 0;
  std::string nonce;
  std::string name;      // how the dialer names itself
  bool join = false;     // the dialer offers its workers (it runs the jobs)
};
std::optional<hello> parse_hello(std::string_view payload);

struct challenge {
  int version = 0;
  std::string nonce;
  std::string proof;
};
std::optional<challenge> parse_challenge(std::string_view payload);

struct welcome {
  std::size_t slots = 0;
  std::string python;    // the acceptor's workers' Python version
  std::string name;
};
std::optional<welcome> parse_welcome(std::string_view payload);

// 32 random bytes, hex-encoded.
std::string make_nonce();

// Hex HMAC-SHA256 of label, first and second under `secret`.
std::string proof_of(std::string_view secret, std::string_view label, std::string_view first,
                     std::string_view second);

bool equal_in_constant_time(std::string_view a, std::string_view b);

// Handshake messages are a few hundred bytes: before authentication a connection may send no
// frame larger than this.
inline constexpr std::size_t max_handshake_frame = 4096;

// Authenticates the messages one side sends, or checks those it receives, after the handshake.
// Distinct objects: safe. Shared objects: unsafe.
class frame_authenticator {
 public:
  static constexpr std::size_t tag_size = 16;

  // `sender` is the role of the side whose messages these are: "dialer" or "acceptor".
  frame_authenticator(std::string_view secret, std::string_view nonce_d, std::string_view nonce_a,
                      std::string_view sender);

  // Appends `type` and `payload` as one frame, with its tag.
  void append_message(std::string& out, msg type, std::string_view payload);
  // Checks the tag of a received frame and strips it; false for a frame that is not the next one
  // the sender sent (forged, altered, replayed, reordered or reflected).
  bool open(std::string_view frame, message& out);

 private:
  void tag(std::string_view body, std::uint64_t seq, unsigned char* out) const;

  struct md_ctx_free {
    void operator()(EVP_MD_CTX* c) const;
  };
  using md_ctx = std::unique_ptr<EVP_MD_CTX, md_ctx_free>;
  md_ctx inner_;    // SHA-256 after (key XOR ipad) and the sender's role
  md_ctx outer_;    // SHA-256 after (key XOR opad)
  md_ctx scratch_;  // the message being tagged
  std::uint64_t seq_ = 0;
};

}  // namespace ppgate::peer
