#include "job.hpp"
#include "json_writer.hpp"
#include "stats_format.hpp"

#include <catch2/catch.hpp>

using namespace ppgate;

TEST_CASE("strings are escaped into valid JSON, invalid UTF-8 included") {
  std::string out;
  append_json_string(out, std::string("a\"b\\c\n\x01 \xc3\xa9 \xff", 12));
  CHECK(out == "\"a\\\"b\\\\c\\n\\u0001 \xc3\xa9 \xef\xbf\xbd\"");
}

TEST_CASE("the JSON writer puts commas between items at every depth and none after keys") {
  std::string out;
  json_writer w(out);
  w.begin_object().member("id", std::uint64_t{7}).member("ok", true).member("name", "a\"b");
  w.key("list").begin_array().value(1).begin_object().end_object().begin_array().end_array().null().end_array();
  w.key("nested").begin_object().member("x", 0.5).end_object().member("last", -3).end_object();
  CHECK(out == R"({"id":7,"ok":true,"name":"a\"b","list":[1,{},[],null],"nested":{"x":0.5},"last":-3})");
}

TEST_CASE("the JSON writer splices items already written, and continues a list") {
  std::string out;
  json_writer(out).begin_object().member("id", 1).raw_items(R"("result":2,"stdout":"")").end_object();
  CHECK(out == R"({"id":1,"result":2,"stdout":""})");
  out.clear();
  json_writer(out).begin_object().raw_items("").member("a", 1).end_object();
  CHECK(out == R"({"a":1})");
  std::string list = R"({"a":1})";
  json_writer(list, /*after_items=*/true).begin_object().member("b", 2).end_object();
  CHECK(list == R"({"a":1},{"b":2})");
  CHECK(json_error_body("no \"job\"") == R"({"error":{"message":"no \"job\""}})");
}

TEST_CASE("floats print as Python's repr does") {
  CHECK(python_float_repr(2.0) == "2.0");
  CHECK(python_float_repr(0.1) == "0.1");
  CHECK(python_float_repr(1.0229220390319824) == "1.0229220390319824");
  CHECK(python_float_repr(100000.0) == "100000.0");
  CHECK(python_float_repr(1e16) == "1e+16");
  CHECK(python_float_repr(0.0001) == "0.0001");
  CHECK(python_float_repr(0.00001) == "1e-05");
  CHECK(python_float_repr(-12.5) == "-12.5");
  CHECK(python_float_repr(123456789012.25) == "123456789012.25");
}

TEST_CASE("non-finite numbers become null in JSON") {
  std::string out;
  append_json_number(out, 1.0 / 0.0);
  CHECK(out == "null");
}

TEST_CASE("the stats table has pp's print_stats layout") {
  scheduler_stats s;
  s.elapsed_seconds = 1.5;
  s.queued = 1;
  s.running = 2;
  s.nodes.push_back({"local", "3.11.2", 2, 3, 0.75});
  s.nodes.push_back({"idle-node", "3.12.1", 1, 0, 0});
  s.nodes.push_back({"10.0.0.2:60000", "", 2, 1, 0.25});  // a node whose Python is not known
  const std::string expected =
      "Job execution statistics:\n"
      " job count | % of all jobs | job time sum | time per job | job server\n"
      "         3 |         75.00 |       0.7500 |     0.250000 | local\n"
      "         1 |         25.00 |       0.2500 |     0.250000 | 10.0.0.2:60000\n"
      "Time elapsed since server creation 1.5\n"
      "3 active tasks, 4 cores\n"
      "Python 3.11.2 on local\n"
      "Python 3.12.1 on idle-node\n"
      "\n";
  CHECK(format_stats_table(s, 4) == expected);
}

TEST_CASE("a reported job end is read from a worker's reply and from a peer's result") {
  const auto w = parse_reported_end("7 ok 1.5e-06\n\"result\":49,\"stdout\":\"\",\"stderr\":\"\"");
  CHECK(w.id == 7);
  CHECK(w.word == "ok");
  CHECK(w.seconds == Approx(1.5e-06));
  CHECK(w.outcome == "\"result\":49,\"stdout\":\"\",\"stderr\":\"\"");
  const auto p = parse_reported_end("12 cancelled 0\n\"error\":{}");
  CHECK(p.id == 12);
  CHECK(p.word == "cancelled");
  CHECK(p.seconds == 0);
  const auto bare = parse_reported_end("3 skipped 0");
  CHECK(bare.word == "skipped");
  CHECK(bare.outcome.empty());
}
