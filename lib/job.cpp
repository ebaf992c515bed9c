#include "job.hpp"

#include <algorithm>

#include "json_writer.hpp"

// The low-level digest functions are deprecated in OpenSSL 3 in favour of EVP (see
// function_hash for why they are used); they are there in every OpenSSL 3.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <charconv>
#include <stdexcept>

namespace ppgate {

namespace {
std::uint64_t last_shared_value_key = 0;  // one event-loop thread makes them
}  // namespace

std::uint64_t next_shared_value_key() { return ++last_shared_value_key; }

void reserve_shared_value_keys(std::uint64_t up_to) {
  last_shared_value_key = std::max(last_shared_value_key, up_to);
}

std::string_view to_string(job_state s) {
  switch (s) {
    case job_state::queued: return "queued";
    case job_state::running: return "running";
    case job_state::done: return "done";
    case job_state::failed: return "failed";
    case job_state::cancelled: return "cancelled";
    case job_state::lost: return "lost";
  }
  return "unknown";
}

std::string_view to_string(arg_codec c) { return c == arg_codec::json ? "json" : "pickle"; }

std::string function_hash(std::string_view entry, const std::vector<std::string>& modules,
                          std::string_view source) {
  // SHA-256 through the digest's own functions, not EVP: an EVP digest first loads OpenSSL's
  // configuration and providers, 1-2 ms of CPU that the node's start (and with it the Python
  // client's first result) would pay, and the node needs nothing else of OpenSSL without peers.
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  auto update = [&ctx](std::string_view part) {
    // A NUL separator keeps ("ab","c") and ("a","bc") apart; none of the parts contain NUL
    // in a way that matters, since the length is folded in too.
    const std::uint64_t n = part.size();
    SHA256_Update(&ctx, &n, sizeof n);
    SHA256_Update(&ctx, part.data(), part.size());
  };
  update(entry);
  for (const auto& m : modules) update(m);
  update("\x01");
  update(source);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &ctx);
  const unsigned len = SHA256_DIGEST_LENGTH;
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  // 128 bits are plenty to name a function; the full digest would only lengthen every message.
  for (unsigned i = 0; i < 16 && i < len; ++i) {
    out.push_back(hex[digest[i] >> 4]);
    out.push_back(hex[digest[i] & 0xf]);
  }
  return out;
}

reported_end parse_reported_end(std::string_view message) {
  reported_end r;
  const auto newline = message.find('\n');
  const std::string_view head = message.substr(0, newline);
  if (newline != std::string_view::npos) r.outcome = message.substr(newline + 1);
  const auto [p, ec] = std::from_chars(head.data(), head.data() + head.size(), r.id);
  std::string_view rest = head.substr(static_cast<std::size_t>(p - head.data()));
  if (rest.starts_with(' ')) rest.remove_prefix(1);
  const auto space = rest.find(' ');
  r.word = rest.substr(0, space);
  if (space != std::string_view::npos)
    std::from_chars(rest.data() + space + 1, rest.data() + rest.size(), r.seconds);
  r.over_memory = head.ends_with(" retire-memory");
  r.retire = r.over_memory || head.ends_with(" retire");
  return r;
}

std::string error_outcome(std::string_view type, std::string_view message,
                          std::string_view traceback) {
  std::string out;
  json_writer w(out);
  w.key("error").begin_object().member("type", type).member("message", message).member("traceback", traceback);
  w.end_object().member("stdout", "").member("stderr", "");
  return out;
}

}  // namespace ppgate
