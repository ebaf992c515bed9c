#include "frame.hpp"

#include <catch2/catch.hpp>

using namespace ppgate;

TEST_CASE("a frame split across many reads is reassembled whole") {
  std::string wire;
  append_frame(wire, "hello");
  append_frame(wire, "");
  append_frame(wire, std::string(100000, 'x'));
  frame_reader reader;
  std::vector<std::string> frames;
  for (std::size_t i = 0; i < wire.size(); i += 7) {
    reader.feed(wire.data() + i, std::min<std::size_t>(7, wire.size() - i));
    std::string_view f;
    while (reader.next(f)) frames.emplace_back(f);
  }
  REQUIRE(frames.size() == 3);
  CHECK(frames[0] == "hello");
  CHECK(frames[1].empty());
  CHECK(frames[2] == std::string(100000, 'x'));
  CHECK(reader.buffered() == 0);
}

TEST_CASE("a frame header announcing more than the limit is a protocol error") {
  frame_reader reader(1024);
  std::string wire;
  append_frame(wire, std::string(2000, 'y'));
  reader.feed(wire.data(), 4);
  std::string_view f;
  CHECK_THROWS_AS(reader.next(f), frame_error);
}

TEST_CASE("the frame header is little-endian") {
  std::string wire;
  append_frame(wire, std::string(0x0102, 'a'));
  CHECK(static_cast<unsigned char>(wire[0]) == 0x02);
  CHECK(static_cast<unsigned char>(wire[1]) == 0x01);
  CHECK(wire[2] == 0);
  CHECK(wire[3] == 0);
}
