#include "job_parser.hpp"

#include <catch2/catch.hpp>

using namespace ppgate;

namespace {

job_submission parse(std::string body) {
  return parse_job_submission(body, [](function_def d) {
    return std::make_shared<const function_def>(std::move(d));
  });
}

std::string error_of(std::string body) {
  try {
    parse(std::move(body));
  } catch (const request_error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("a job object is parsed with every field") {
  auto s = parse(R"({"source":"def f(x, y=1):\n    return x+y\n","function":"f","args":[1, {"a": [2]}],
                     "kwargs":{"y":3},"modules":["math","from os import path"],"group":"g1",
                     "timeout":1.5,"retries":2,"depfuncs":["def g():\n    pass\n"]})");
  REQUIRE(s.jobs.size() == 1);
  CHECK_FALSE(s.batch);
  const auto& j = s.jobs[0];
  CHECK(j.function->entry == "f");
  CHECK(j.function->source.find("def g()") != std::string::npos);
  CHECK(j.function->modules == std::vector<std::string>{"math", "from os import path"});
  CHECK(j.args == R"([1, {"a": [2]}])");
  CHECK(j.kwargs == R"({"y":3})");
  CHECK(j.group == "g1");
  CHECK(j.timeout == std::chrono::milliseconds(1500));
  CHECK(j.retries == 2);
  CHECK(j.function->hash.size() == 32);
}

TEST_CASE("the same function in two jobs has the same hash, a different one does not") {
  auto s = parse(R"([{"source":"def f(): pass","function":"f"},{"source":"def f(): pass","function":"f"},
                     {"source":"def f(): return 1","function":"f"},{"source":"def f(): pass","function":"f","modules":["os"]}])");
  REQUIRE(s.jobs.size() == 4);
  CHECK(s.batch);
  CHECK(s.jobs[0].function->hash == s.jobs[1].function->hash);
  CHECK(s.jobs[0].function->hash != s.jobs[2].function->hash);
  CHECK(s.jobs[0].function->hash != s.jobs[3].function->hash);
}

TEST_CASE("bad submissions are refused with a message naming the problem") {
  CHECK(error_of("{") .find("invalid JSON") == 0);
  CHECK(error_of("42") == "the body must be a job object or an array of job objects");
  CHECK(error_of("[]") == "a batch must hold at least one job");
  CHECK(error_of(R"({"source":"x"})") == "field 'function' is required");
  CHECK(error_of(R"({"function":"f","bogus":1,"source":""})") == "unknown field 'bogus'");
  CHECK(error_of(R"({"function":5})") == "field 'function' must be a string");
  CHECK(error_of(R"({"function":"f"})").find("importable reference") != std::string::npos);
  CHECK(error_of(R"({"function":"f","source":"x","args":{"a":1}})").find("field 'args' must be an array") == 0);
  CHECK(error_of(R"({"function":"f","source":"x","timeout":-1})").find("field 'timeout'") == 0);
  CHECK(error_of(R"({"function":"f","source":"x","retries":1000})").find("field 'retries'") == 0);
  CHECK(error_of(R"({"function":"f","source":"x","codec":"yaml"})").find("field 'codec'") == 0);
  CHECK(error_of(R"({"function":"f","source":"x","codec":"pickle","args":[1]})").find("base64") != std::string::npos);
  CHECK(error_of(R"({"function":"f;rm","source":"x"})").find("not a Python name") != std::string::npos);
  CHECK(error_of(R"({"function":"f","source":"x"} {})") == "invalid JSON: trailing content after the body");
  CHECK(error_of(R"([{"function":"f","source":"x"}, 3])") == "batch element 1 must be a job object");
  CHECK(error_of(R"({"function":"f","source":"x","modules":[1]})") == "field 'modules' must be an array of strings");
}

TEST_CASE("an importable reference needs no source") {
  auto s = parse(R"({"function":"math:sqrt","args":[4]})");
  CHECK(s.jobs[0].function->entry == "math:sqrt");
  CHECK(s.jobs[0].function->source.empty());
}

namespace {
std::string cancel_error(std::string text) {
  try {
    parse_control_message(text);
  } catch (const request_error& e) {
    return e.what();
  }
  return "";
}
std::vector<std::int64_t> refused_tags(std::string text) { return tags_of_refused_batch(text); }
}  // namespace

TEST_CASE("a control message is read in any valid JSON spelling") {
  std::string compact = R"({"cancel":7})", spaced = " { \"cancel\" : 42 }\n";
  CHECK(parse_control_message(compact).id == 7);
  const auto c = parse_control_message(spaced);
  CHECK((c.what == session_control::kind::cancel && c.id == 42));
  std::string put = R"({"value": "gAQu" , "put":3})", release = R"({"release":3})";
  const auto p = parse_control_message(put);
  CHECK((p.what == session_control::kind::put && p.id == 3 && p.value == R"("gAQu")"));
  const auto r = parse_control_message(release);
  CHECK((r.what == session_control::kind::release && r.id == 3));
  CHECK(cancel_error(R"({"put":3})").find("a JSON array of jobs,") != std::string::npos);  // no value
  CHECK(cancel_error(R"({"release":3,"value":"gAQu"})").find("a JSON array of jobs,") != std::string::npos);
  CHECK(cancel_error(R"({"put":3,"value":[1]})").find("a base64 string or a pickle in parts") != std::string::npos);
  CHECK(cancel_error(R"({"put":3,"value":{"shm":"ppgate-1-1-x","parts":[[0,1]]}})").find("only a session") !=
        std::string::npos);
  CHECK(cancel_error(R"({"put":"x","value":"gAQu"})") == "\"put\" takes a value's number, an integer");
  CHECK(cancel_error("hello").find("a JSON array of jobs,") != std::string::npos);
  CHECK(cancel_error(R"({"cancel":"x"})") == "\"cancel\" takes a job's tag, an integer");
  CHECK(cancel_error(R"({"cancel":1,"also":2})").find("a JSON array of jobs,") != std::string::npos);
  CHECK(cancel_error(R"({"cancel":1,"release":2})").find("a JSON array of jobs,") != std::string::npos);
  CHECK(cancel_error(R"({"stop":1})").find("a JSON array of jobs,") != std::string::npos);
  CHECK(cancel_error("{}").find("a JSON array of jobs,") != std::string::npos);
  CAPTURE(cancel_error(R"({"cancel":1} x)"));
  CHECK(cancel_error(R"({"cancel":1} x)").find("invalid JSON") != std::string::npos);
  CHECK(cancel_error(R"({"cancel":1} {})").find("invalid JSON") != std::string::npos);
}

TEST_CASE("the tags of a refused batch are found, well-formed or not") {
  // Valid JSON: per element, and only the top-level "tag" of each.
  CHECK(refused_tags(R"([{"tag": 5, "fn_id": 9}, {"kwargs": {"tag": 99}, "tag":6}])") ==
        std::vector<std::int64_t>{5, 6});
  // Malformed: a lenient scan, spaces allowed around the colon.
  CHECK(refused_tags(R"([{"tag" : 7,"function":"f"},{"tag":8,"function":)") ==
        std::vector<std::int64_t>{7, 8});
  CHECK(refused_tags("not json").empty());
}

TEST_CASE("a session's functions: defined by fn_id, referenced later, never by a refused batch") {
  session_tables tables;
  session_functions& session = tables.functions;
  auto intern = [](function_def d) { return std::make_shared<const function_def>(std::move(d)); };
  auto submit = [&](std::string body) { return parse_job_submission(body, intern, &tables); };

  // Defined and referenced in one batch; tags come back per job.
  auto s = submit(R"([{"tag":1,"fn_id":1,"source":"def f(x): return x","function":"f","args":[1]},
                      {"tag":2,"fn_id":1,"args":[2]}])");
  REQUIRE(s.jobs.size() == 2);
  CHECK(s.tags == std::vector<std::int64_t>{1, 2});
  CHECK(s.jobs[0].function == s.jobs[1].function);
  CHECK(session.count(1) == 1);

  // A refused batch defines nothing, not even the functions of its well-formed jobs.
  CHECK_THROWS_AS(submit(R"([{"tag":3,"fn_id":2,"source":"def g(): pass","function":"g"},
                             {"tag":4,"fn_id":3,"source":"def h(): pass","function":"h","timeout":-1}])"),
                  request_error);
  CHECK(session.count(2) == 0);
  CHECK(session.count(3) == 0);
  std::string unknown = R"([{"tag":5,"fn_id":2}])";
  try {
    parse_job_submission(unknown, intern, &tables);
    FAIL("an unknown fn_id was accepted");
  } catch (const request_error& e) {
    CHECK(std::string(e.what()).find("unknown fn_id 2") != std::string::npos);
  }
  // Earlier definitions stay.
  CHECK(submit(R"([{"tag":6,"fn_id":1,"args":[3]}])").jobs[0].function->entry == "f");
  // Outside a session, fn_id and tag are refused.
  CHECK(error_of(R"({"fn_id":1,"function":"f","source":"def f(): pass"})").find("session") != std::string::npos);
}

TEST_CASE("a session's values: put, taken by refs in order, defined in a batch only if it is accepted") {
  session_tables tables;
  auto intern = [](function_def d) { return std::make_shared<const function_def>(std::move(d)); };
  auto submit = [&](std::string body) { return parse_job_submission(body, intern, &tables); };
  tables.refs[1] = std::make_shared<const shared_value>(shared_value{next_shared_value_key(), R"("gAQu")", nullptr});

  auto s = submit(R"([{"tag":1,"fn_id":1,"source":"def f(a, b): return a","function":"f","codec":"pickle",
                       "refs":[1, {"put":2,"value":{"parts":["gAQu"]}}]},
                      {"tag":2,"fn_id":1,"codec":"pickle","refs":[2,2,1]}])");
  REQUIRE(s.jobs.size() == 2);
  REQUIRE(s.jobs[0].refs.size() == 2);
  CHECK(s.jobs[0].refs[0] == tables.refs.at(1));
  CHECK(s.jobs[0].refs[1]->value == R"({"parts":["gAQu"]})");
  CHECK(s.jobs[0].refs[0]->key != s.jobs[0].refs[1]->key);
  CHECK(s.jobs[1].refs == std::vector{tables.refs.at(2), tables.refs.at(2), tables.refs.at(1)});

  auto error = [&](std::string body) {
    try {
      submit(std::move(body));
    } catch (const request_error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK_THAT(error(R"([{"tag":3,"fn_id":1,"codec":"pickle","refs":[{"put":5,"value":"gAQu"}]},
                       {"tag":4,"fn_id":1,"codec":"pickle","refs":[9]}])"),
             Catch::Contains("unknown ref 9"));
  CHECK(tables.refs.count(5) == 0);  // the refused batch's definition was not kept
  CHECK_THAT(error(R"([{"tag":3,"fn_id":1,"refs":[1]}])"), Catch::Contains("needs codec \"pickle\""));
  CHECK_THAT(error(R"([{"tag":3,"fn_id":1,"codec":"pickle","refs":["x"]}])"), Catch::Contains("'refs'"));
  CHECK_THAT(error(R"([{"tag":3,"fn_id":1,"codec":"pickle","refs":[{"put":6}]}])"),
             Catch::Contains("{\"put\": ID, \"value\": ...}"));
  CHECK_THAT(error(R"({"function":"math:sqrt","codec":"pickle","refs":[1]})"), Catch::Contains("session"));
}
