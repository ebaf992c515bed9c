#include "peer_protocol.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <stdexcept>

namespace ppgate::peer {

namespace {

std::string to_hex(const unsigned char* data, std::size_t n) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(hex[data[i] >> 4]);
    out.push_back(hex[data[i] & 0xf]);
  }
  return out;
}

}  // namespace

void append_message(std::string& out, msg type, std::string_view payload) {
  std::string body;
  body.reserve(1 + payload.size());
  body.push_back(static_cast<char>(type));
  body.append(payload);
  append_frame(out, body);
}

bool parse_message(std::string_view frame, message& out) {
  if (frame.empty()) return false;
  out.type = static_cast<msg>(static_cast<unsigned char>(frame[0]));
  out.payload = frame.substr(1);
  return true;
}

std::string make_nonce() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("no random bytes for a nonce");
  return to_hex(bytes, sizeof bytes);
}

std::string proof_of(std::string_view secret, std::string_view label, std::string_view first,
                     std::string_view second) {
  const std::string text = std::string(label) + '\n' + std::string(first) + '\n' + std::string(second);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest, &len);
  return to_hex(digest, len);
}

bool equal_in_constant_time(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

frame_authenticator::frame_authenticator(std::string_view secret, std::string_view nonce_d,
                                         std::string_view nonce_a, std::string_view sender)
    : sender_(sender) {
  const std::string text = "session\n" + std::string(nonce_d) + '\n' + std::string(nonce_a);
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), key_, &len);
}

void frame_authenticator::tag(std::string_view body, std::uint64_t seq, unsigned char* out) const {
  // HMAC(key, sender "\n" seq(8 bytes, little-endian) body)
  std::string text;
  text.reserve(sender_.size() + 9 + body.size());
  text.append(sender_);
  text.push_back('\n');
  for (int i = 0; i < 8; ++i) text.push_back(static_cast<char>((seq >> (8 * i)) & 0xff));
  text.append(body);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_, sizeof key_, reinterpret_cast<const unsigned char*>(text.data()), text.size(),
       digest, &len);
  std::memcpy(out, digest, tag_size);
}

void frame_authenticator::append_message(std::string& out, msg type, std::string_view payload) {
  std::string body;
  body.reserve(1 + payload.size() + tag_size);
  body.push_back(static_cast<char>(type));
  body.append(payload);
  unsigned char t[tag_size];
  tag(body, seq_++, t);
  body.append(reinterpret_cast<const char*>(t), tag_size);
  append_frame(out, body);
}

bool frame_authenticator::open(std::string_view frame, message& out) {
  if (frame.size() < 1 + tag_size) return false;
  const std::string_view body = frame.substr(0, frame.size() - tag_size);
  unsigned char expected[tag_size];
  tag(body, seq_, expected);
  if (CRYPTO_memcmp(expected, frame.data() + body.size(), tag_size) != 0) return false;
  ++seq_;
  return parse_message(body, out);
}

}  // namespace ppgate::peer
