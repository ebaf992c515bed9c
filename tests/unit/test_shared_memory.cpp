// Shared memory: which names a session may use, how the parser takes pickles in parts, and how a
// file's parts are sent inline to a peer.
#include "job_message.hpp"
#include "job_parser.hpp"
#include "shared_memory.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

using namespace ppgate;

namespace {

constexpr std::string_view prefix = "ppgate-99-7-";

job_spec parse_pickled(const std::string& args, std::string_view shm_prefix = prefix) {
  session_tables tables;
  tables.shm_prefix = shm_prefix;
  std::string body = R"([{"tag":1,"function":"f","source":"def f(b):\n    return b\n","codec":"pickle","args":)" +
                     args + "}]";
  auto s = parse_job_submission(body, [](function_def d) { return std::make_shared<const function_def>(std::move(d)); },
                                &tables);
  return std::move(s.jobs.at(0));
}

std::string refusal(const std::string& args, std::string_view shm_prefix = prefix) {
  try {
    parse_pickled(args, shm_prefix);
  } catch (const request_error& e) {
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE("a session names only files under its own prefix") {
  using shared_memory::is_session_file;
  CHECK(is_session_file("ppgate-99-7-a1", prefix));
  CHECK(is_session_file("ppgate-99-7-r12_x-Y", prefix));
  CHECK_FALSE(is_session_file("ppgate-99-7-", prefix));          // nothing after the prefix
  CHECK_FALSE(is_session_file("ppgate-99-8-a1", prefix));        // another session's
  CHECK_FALSE(is_session_file("ppgate-99-7-../x", prefix));      // a path
  CHECK_FALSE(is_session_file("ppgate-99-7-a.b", prefix));
  CHECK_FALSE(is_session_file("ppgate-99-7-" + std::string(65, 'a'), prefix));
  CHECK_FALSE(is_session_file("ppgate-99-7-a1", ""));            // no shared memory at all
  CHECK(shared_memory::new_session_prefix() != shared_memory::new_session_prefix());
  CHECK(shared_memory::new_session_prefix().starts_with(shared_memory::node_prefix()));
}

TEST_CASE("pickles in parts are parsed and kept as given") {
  const std::string in_shm = R"({"shm":"ppgate-99-7-a1","parts":[[0,10],[64,1000]]})";
  CHECK(parse_pickled(in_shm).args == in_shm);
  const std::string inline_parts = R"({"parts":["gASVAAAA","AAEC"]})";
  CHECK(parse_pickled(inline_parts, "").args == inline_parts);
  CHECK(parse_pickled(R"("gASVAAAA"  )").args == R"("gASVAAAA")");  // a string keeps its quotes

  CHECK_THAT(refusal(R"({"shm":"ppgate-99-7-a1","parts":[[0,1]]})", ""),
             Catch::Contains("only a session from this node's host"));
  CHECK_THAT(refusal(R"({"shm":"ppgate-1-1-a1","parts":[[0,1]]})"), Catch::Contains("not this session's"));
  CHECK_THAT(refusal(R"({"shm":"ppgate-99-7-a1","parts":[]})"), Catch::Contains("at least one part"));
  CHECK_THAT(refusal(R"({"shm":"ppgate-99-7-a1","parts":[[0,-1]]})"), Catch::Contains("[offset, size]"));
  CHECK_THAT(refusal(R"({"shm":"ppgate-99-7-a1","parts":[[0,1,2]]})"), Catch::Contains("[offset, size]"));
  CHECK_THAT(refusal(R"({"parts":[1]})"), Catch::Contains("must be a base64 string"));
  CHECK_THAT(refusal(R"({"parts":["x"],"extra":1})"), Catch::Contains("'extra' is not one of its fields"));
  CHECK_THAT(refusal(R"({"shm":"ppgate-99-7-a1"})"), Catch::Contains("must be a base64 string"));
  CHECK_THAT(refusal(R"([1,2])"), Catch::Contains("base64 string of a pickled tuple"));
}

TEST_CASE("a job's parts in shared memory go to a peer inline") {
  const std::string name = shared_memory::new_session_prefix() + "a1";
  const std::string path = "/dev/shm/" + name;
  {
    std::ofstream f(path, std::ios::binary);
    f << "HEAD" << std::string(60, '\0') << "Ma";  // parts [0,4] and [64,2]
  }
  job j;
  j.id = 5;
  j.spec.function = std::make_shared<const function_def>(function_def{"h", "def f(b):\n    return b\n", "f", {}});
  j.spec.codec = arg_codec::pickle;
  j.spec.args = R"({"shm":")" + name + R"(","parts":[[0,4],[64,2]]})";
  j.spec.kwargs = R"("gAR9lC4=")";

  std::string to_worker, to_peer;
  append_job_message(to_worker, j, {.fn_id = 1});
  CHECK_THAT(to_worker, Catch::Contains(j.spec.args));  // a worker of this host maps the file
  append_job_message(to_peer, j, {.fn_id = 1, .with_options = true, .inline_shared_memory = true});
  CHECK_THAT(to_peer, Catch::Contains(R"("args":{"parts":["SEVBRA==","TWE="]})"));
  CHECK_THAT(to_peer, Catch::Contains(R"("kwargs":"gAR9lC4=")"));

  std::string attachments, to_peer_binary;
  append_job_message(to_peer_binary, j,
                     {.fn_id = 1, .with_options = true, .inline_shared_memory = true, .attachments = &attachments});
  CHECK_THAT(to_peer_binary, Catch::Contains(R"("args":{"attached":true,"parts":[[0,4],[64,2]]})"));
  CHECK(attachments == "HEAD" + std::string(60, '\0') + "Ma");

  const std::string message = shared_memory::binary_message_length(3) + "[1]" + "xyz";
  const auto parts = shared_memory::split_binary_message(message);
  CHECK((parts.json == "[1]" && parts.attachments == "xyz"));
  CHECK_THROWS_AS(shared_memory::split_binary_message("\x01"), shared_memory::error);
  CHECK_THROWS_AS(shared_memory::split_binary_message(std::string("\x09\0\0\0[1]", 7)), shared_memory::error);

  // A range past the file's end, and a file that is gone: the job cannot be sent.
  j.spec.args = R"({"shm":")" + name + R"(","parts":[[64,10]]})";
  std::string out;
  CHECK_THROWS_AS(append_job_message(out, j, {.fn_id = 1, .inline_shared_memory = true}), shared_memory::error);
  CHECK(shared_memory::remove_files(name) == 1);
  CHECK(::access(path.c_str(), F_OK) != 0);
  j.spec.args = R"({"shm":")" + name + R"(","parts":[[0,4]]})";
  CHECK_THROWS_AS(append_job_message(out, j, {.fn_id = 1, .inline_shared_memory = true}), shared_memory::error);
}

TEST_CASE("a big result crosses a peer link as attachments and lands in its session's file") {
  // The peer's worker left it in a file; the peer attaches the file's bytes.
  const std::string prefix = shared_memory::new_session_prefix();
  const std::string worker_file = prefix + "r7";
  shared_memory::write_file(worker_file, "PICKLE" + std::string(58, '\0') + "BUF");
  std::string attachments = "x";  // something before: the result starts at the next 64 bytes
  const std::string attached = shared_memory::attach_result(
      R"({"shm":")" + worker_file + R"(","parts":[[0,6],[64,3]]})", attachments);
  CHECK(attached == R"("result":{"attached":true,"parts":[[64,6],[128,3]]})");
  CHECK(attachments.size() == 64 + 67);
  CHECK(shared_memory::remove_files(worker_file) == 0);  // taken: the file is gone

  // The dialer writes the attachments to the file its session reads results from.
  const std::string session_file = prefix + "r8";
  const std::string outcome = shared_memory::result_to_file(attached + R"(,"stdout":"")", attachments, session_file);
  CHECK(outcome == R"("result":{"shm":")" + session_file + R"(","parts":[[64,6],[128,3]]},"stdout":"")");
  std::string back;
  shared_memory::take_file(session_file, back);
  CHECK(back == attachments);

  CHECK_THROWS_AS(shared_memory::result_to_file(R"("result":{"attached":true,"parts":[[0,999]]})", "abc", prefix + "r9"),
                  shared_memory::error);
  CHECK_THROWS_AS(shared_memory::attach_result(R"({"shm":")" + prefix + R"(gone","parts":[[0,1]]})", attachments),
                  shared_memory::error);
}
