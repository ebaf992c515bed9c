#include "peer_protocol.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <charconv>
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
  const char type_byte = static_cast<char>(type);
  append_frame(out, std::string_view(&type_byte, 1), payload);
}

bool parse_message(std::string_view frame, message& out) {
  if (frame.empty()) return false;
  out.type = static_cast<msg>(static_cast<unsigned char>(frame[0]));
  out.payload = frame.substr(1);
  return true;
}

namespace {

// The next space-separated word of `rest` (consumed with its separator).
std::string_view next_word(std::string_view& rest) {
  const auto space = rest.find(' ');
  const std::string_view word = rest.substr(0, space);
  rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
  return word;
}

template <typename T>
bool parse_number(std::string_view word, T& out) {
  const auto [p, ec] = std::from_chars(word.data(), word.data() + word.size(), out);
  return ec == std::errc() && p == word.data() + word.size() && !word.empty();
}

}  // namespace

std::optional<hello> parse_hello(std::string_view payload) {
  // "PPGATE <version> <nonce> <name>[ join]"
  hello h;
  h.magic = next_word(payload);
  if (!parse_number(next_word(payload), h.version)) return std::nullopt;
  h.nonce = next_word(payload);
  h.name = next_word(payload);
  const auto mode = next_word(payload);
  if (mode == "join") h.join = true;
  else if (!mode.empty()) return std::nullopt;
  return h;
}

std::optional<challenge> parse_challenge(std::string_view payload) {
  // "<version> <nonce> <proof>"
  challenge c;
  if (!parse_number(next_word(payload), c.version)) return std::nullopt;
  c.nonce = next_word(payload);
  c.proof = next_word(payload);
  return c;
}

std::optional<welcome> parse_welcome(std::string_view payload) {
  // "<slots> <python version> <name>"
  welcome w;
  if (!parse_number(next_word(payload), w.slots)) return std::nullopt;
  w.python = next_word(payload);
  w.name = next_word(payload);
  return w;
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

void frame_authenticator::md_ctx_free::operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }

frame_authenticator::frame_authenticator(std::string_view secret, std::string_view nonce_d,
                                         std::string_view nonce_a, std::string_view sender)
    : inner_(EVP_MD_CTX_new()), outer_(EVP_MD_CTX_new()), scratch_(EVP_MD_CTX_new()) {
  if (!inner_ || !outer_ || !scratch_) throw std::bad_alloc();
  const std::string text = "session\n" + std::string(nonce_d) + '\n' + std::string(nonce_a);
  unsigned char key[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), key, &len);
  // HMAC-SHA256 by its definition (RFC 2104), with the key's two padded blocks and the sender's
  // role hashed once here: a tag then costs two state copies and the hashing of the message.
  unsigned char ipad[64], opad[64];
  for (std::size_t i = 0; i < 64; ++i) {
    const unsigned char k = i < sizeof key ? key[i] : 0;
    ipad[i] = k ^ 0x36;
    opad[i] = k ^ 0x5c;
  }
  const std::string role = std::string(sender) + '\n';
  if (EVP_DigestInit_ex(inner_.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(inner_.get(), ipad, sizeof ipad) != 1 ||
      EVP_DigestUpdate(inner_.get(), role.data(), role.size()) != 1 ||
      EVP_DigestInit_ex(outer_.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(outer_.get(), opad, sizeof opad) != 1)
    throw std::runtime_error("SHA-256 is not available");
}

void frame_authenticator::tag(std::string_view body, std::uint64_t seq, unsigned char* out) const {
  // HMAC(key, sender "\n" seq(8 bytes, little-endian) body)
  unsigned char seq_bytes[8];
  for (int i = 0; i < 8; ++i) seq_bytes[i] = static_cast<unsigned char>((seq >> (8 * i)) & 0xff);
  unsigned char inner_digest[32], digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX* c = scratch_.get();
  if (EVP_MD_CTX_copy_ex(c, inner_.get()) != 1 || EVP_DigestUpdate(c, seq_bytes, sizeof seq_bytes) != 1 ||
      EVP_DigestUpdate(c, body.data(), body.size()) != 1 || EVP_DigestFinal_ex(c, inner_digest, &len) != 1 ||
      EVP_MD_CTX_copy_ex(c, outer_.get()) != 1 || EVP_DigestUpdate(c, inner_digest, sizeof inner_digest) != 1 ||
      EVP_DigestFinal_ex(c, digest, &len) != 1)
    throw std::runtime_error("SHA-256 failed");
  std::memcpy(out, digest, tag_size);
}

void frame_authenticator::append_message(std::string& out, msg type, std::string_view payload) {
  // The frame is built in place: header, type, payload, then the tag over type and payload.
  const std::size_t n = 1 + payload.size() + tag_size;
  if (n > max_frame_size) throw frame_error("frame payload too large");
  out.reserve(out.size() + frame_header_size + n);
  const char header[frame_header_size] = {
      static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
      static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  out.append(header, frame_header_size);
  const std::size_t body_at = out.size();
  out.push_back(static_cast<char>(type));
  out.append(payload);
  unsigned char t[tag_size];
  tag(std::string_view(out).substr(body_at), seq_++, t);
  out.append(reinterpret_cast<const char*>(t), tag_size);
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
