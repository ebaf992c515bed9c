#include "job_message.hpp"
#include "job_parser.hpp"

#include <catch2/catch.hpp>

using namespace ppgate;

namespace {

std::shared_ptr<const function_def> keep(function_def d) { return std::make_shared<const function_def>(std::move(d)); }

job job_from(std::string body) {
  auto s = parse_job_submission(body, keep);
  job j;
  j.id = 42;
  j.spec = std::move(s.jobs.at(0));
  return j;
}

// Encodes `j` as a peer gets it, then reads it back as the peer does: a session batch.
job_submission round_trip(const job& j, session_tables& known, bool with_definition, std::int64_t fn_id = 7) {
  std::string batch = "[";
  append_job_message(batch, j, {.fn_id = fn_id, .with_definition = with_definition, .with_options = true});
  batch += ']';
  return parse_job_submission(batch, keep, &known);
}

}  // namespace

TEST_CASE("a job message read back by the session parser gives the same job") {
  const job j = job_from(R"({"source":"def f(x, y=1):\n    return x+y\n","function":"f","args":[[1],[{"a":"é\n"}]],
                             "kwargs":{"y":3},"modules":["math","from os import path"],"group":"g1",
                             "timeout":1.5,"retries":2,"map":true})");
  session_tables known;
  const auto first = round_trip(j, known, true);
  REQUIRE(first.jobs.size() == 1);
  CHECK(first.tags == std::vector<std::int64_t>{42});
  const job_spec& back = first.jobs[0];
  CHECK(back.function->entry == j.spec.function->entry);
  CHECK(back.function->source == j.spec.function->source);
  CHECK(back.function->modules == j.spec.function->modules);
  CHECK(back.function->hash == j.spec.function->hash);
  CHECK(back.codec == arg_codec::json);
  CHECK(back.args == j.spec.args);
  CHECK(back.kwargs == j.spec.kwargs);
  CHECK(back.group == "g1");
  CHECK(back.timeout == std::chrono::milliseconds(1500));
  CHECK(back.retries == 2);
  CHECK(back.map);

  // A later job of the same function names it by its fn_id alone.
  const auto later = round_trip(j, known, false);
  CHECK(later.jobs.at(0).function->hash == j.spec.function->hash);
}

TEST_CASE("a job message carries pickled arguments as strings and the definition only when asked to") {
  const job j = job_from(R"({"source":"def f(x):\n    return x\n","function":"f","codec":"pickle",
                             "args":"gASVBQAAAAAAAABLBYWULg==","globals":"gAR9lC4="})");
  std::string with, without;
  append_job_message(with, j, {.fn_id = 3, .with_definition = true});
  append_job_message(without, j, {.fn_id = 3});
  CHECK(with.starts_with(R"({"tag":42,"fn_id":3,"function":"f","source":"def f(x):\n    return x\n","modules":[])"));
  CHECK(without == R"({"tag":42,"fn_id":3,"codec":"pickle","args":"gASVBQAAAAAAAABLBYWULg==","globals":"gAR9lC4="})");

  session_tables known;
  const auto back = round_trip(j, known, true);
  CHECK(back.jobs.at(0).codec == arg_codec::pickle);
  CHECK(back.jobs.at(0).args == j.spec.args);
  CHECK(back.jobs.at(0).globals == j.spec.globals);
}

TEST_CASE("a job message for an unknown fn_id without its definition is refused by the receiver") {
  const job j = job_from(R"({"source":"def f():\n    return 1\n","function":"f"})");
  session_tables known;
  CHECK_THROWS_AS(round_trip(j, known, false), request_error);
}
