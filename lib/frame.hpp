// Length-prefixed frames: a 4-byte little-endian payload length, then the payload.
// Used on the gateway <-> worker socketpair in both directions.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ppgate {

// A frame bigger than this is a protocol error: the sender is broken or hostile.
inline constexpr std::size_t max_frame_size = 256u * 1024 * 1024;
inline constexpr std::size_t frame_header_size = 4;

struct frame_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Appends header and payload to `out`, so both go out in one write. A frame's payload may be
// given in two parts (a short prefix and the body), to spare copying the body once more.
inline void append_frame(std::string& out, std::string_view prefix, std::string_view payload) {
  if (payload.size() > max_frame_size - prefix.size()) throw frame_error("frame payload too large");
  const auto n = static_cast<std::uint32_t>(prefix.size() + payload.size());
  const char header[frame_header_size] = {
      static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
      static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  out.append(header, frame_header_size);
  out.append(prefix);
  out.append(payload);
}

inline void append_frame(std::string& out, std::string_view payload) { append_frame(out, {}, payload); }

// Incremental decoder: feed it whatever the socket gave, take out complete frames.
class frame_reader {
 public:
  explicit frame_reader(std::size_t limit = max_frame_size) : limit_(limit) {}

  void feed(const char* data, std::size_t n) {
    // Drop consumed bytes before growing, so the buffer stays as large as one frame.
    if (consumed_ > 0 && consumed_ == buffer_.size()) {
      buffer_.clear();
      consumed_ = 0;
    } else if (consumed_ > 64 * 1024) {
      buffer_.erase(0, consumed_);
      consumed_ = 0;
    }
    buffer_.append(data, n);
  }

  // Returns true and sets `payload` (a view into the reader, valid until the next feed/next call)
  // when a whole frame is buffered. Throws frame_error on an oversized length.
  bool next(std::string_view& payload) {
    const std::size_t available = buffer_.size() - consumed_;
    if (available < frame_header_size) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(buffer_.data() + consumed_);
    const std::size_t n = std::size_t(p[0]) | std::size_t(p[1]) << 8 | std::size_t(p[2]) << 16 |
                          std::size_t(p[3]) << 24;
    if (n > limit_) throw frame_error("frame of " + std::to_string(n) + " bytes exceeds the limit");
    if (available < frame_header_size + n) return false;
    payload = std::string_view(buffer_.data() + consumed_ + frame_header_size, n);
    consumed_ += frame_header_size + n;
    return true;
  }

  std::size_t buffered() const { return buffer_.size() - consumed_; }
  void set_limit(std::size_t limit) { limit_ = limit; }

 private:
  std::size_t limit_;
  std::string buffer_;
  std::size_t consumed_ = 0;
};

}  // namespace ppgate
