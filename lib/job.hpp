// Jobs, the functions they run, and their life cycle:
//   queued -> running -> done | failed | cancelled | lost   (running -> queued again on a retry)
// Every accepted job reaches exactly one terminal state.
#pragma once

#include "net.hpp"
#include "shared_memory.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ppgate {

using steady_clock = std::chrono::steady_clock;

enum class job_state : std::uint8_t { queued, running, done, failed, cancelled, lost };

std::string_view to_string(job_state s);

// Seconds since the epoch, now.
inline double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
inline bool is_terminal(job_state s) { return s >= job_state::done; }

enum class arg_codec : std::uint8_t { json, pickle };
std::string_view to_string(arg_codec c);

// A function as it travels to workers. Jobs share one immutable function_def per hash, so the
// source of a function submitted a million times is stored once.
struct function_def {
  std::string hash;                  // hex digest of entry, modules and source
  std::string source;                // function plus dependency sources; empty for a reference
  std::string entry;                 // name to call, or "module:qualname" when source is empty
  std::vector<std::string> modules;  // "math", or full "import x as y" / "from x import y"

  // Scheduler bookkeeping, not identity: a running mean of how long the function's jobs take,
  // which decides whether a job may wait in a busy worker's pipe (see scheduler::slot_can_prefetch).
  mutable double mean_run_seconds = 0;
  mutable std::uint64_t runs = 0;
};

// Computes the identity of a function: SHA-256 over entry, modules and source.
std::string function_hash(std::string_view entry, const std::vector<std::string>& modules,
                          std::string_view source);

// A value put once on a session ({"put": ID, "value": PICKLE}) that many jobs take as an argument
// (docs/rest.md, "Values put once"). Shared by the session's table and the jobs that take it.
struct shared_value {
  std::uint64_t key = 0;  // node-wide: a worker unpickles the value once, and keeps it under this
  std::string value;      // the pickle's JSON text, as for a pickled argument
  std::shared_ptr<const shared_memory::node_file> file;  // the file it is in, if the node wrote it
  bool in_client_memory = false;  // in a file the session's client wrote: gone with the session
};
std::uint64_t next_shared_value_key();
// Keys up to `up_to` are taken (values restored from a journal keep theirs).
void reserve_shared_value_keys(std::uint64_t up_to);

// What a submitter asked for.
struct job_spec {
  std::shared_ptr<const function_def> function;
  arg_codec codec = arg_codec::json;
  // Each as the JSON text the submitter gave, checked (empty: not given). json: an array (args)
  // or object; pickle: a base64 string of a pickled tuple (args) or dict, or the pickle in parts,
  // inline or in shared memory (job_parser.cpp, check_pickled_parts).
  std::string args;
  std::string kwargs;
  std::string globals;  // like kwargs: names set in the job's namespace before its source runs
  // The values the pickles name (persistent ids: their index here). Dropped when the job ends.
  std::vector<std::shared_ptr<const shared_value>> refs;
  // The file the node wrote for its arguments (a binary message's attachments), or null.
  // Dropped (removed) when the job ends.
  std::shared_ptr<const shared_memory::node_file> attachments;
  std::string group = "default";
  std::optional<std::chrono::milliseconds> timeout;  // running time allowed per attempt
  // Extra attempts, counted apart for the two ways a job can fail: its worker died mid-job, or
  // the job itself failed (raised, timed out, went over --max-worker-memory).
  int retries = 0;
  // Before the first rerun of a job that failed, wait this long; twice as long before each later one.
  std::chrono::milliseconds retry_backoff{0};
  int priority = 0;  // higher first; first come, first served within one priority
  // The id the submitter chose, so it is known before any answer (0: the node picks one). Ids
  // the node picks stay below client_id_min, so the two never meet.
  std::uint64_t requested_id = 0;
  // Survives the session that submitted it: closing the session does not cancel it, and its
  // result stays on the node for anyone to collect (GET /v1/jobs/{id}).
  bool detach = false;
  // Came on a session or a peer link, which goes when the node stops: after a restart from the
  // journal, such a job is not run again unless it is detached (nobody would collect it).
  bool from_link = false;
  // A map job: `args` holds one argument list per call of the function, and its result one
  // outcome per call, in order; a call that raises keeps its error and the others go on.
  bool map = false;
  bool local_only = false;  // came from a peer: runs on this node's own workers, never forwarded
  // From a peer link: the node that sent it takes a big result in parts (docs/peers.md).
  bool results_in_parts = false;
  // The shared-memory prefix of the session that submitted it (shared_memory.hpp), or empty: a
  // worker may return a big result as a file under it.
  std::string shm_prefix;
};

// The range of job ids a submitter may choose (job_spec::requested_id): 2^32 to 2^53 - 1, so
// they are exact in a JavaScript number too, and never ids the node picks itself.
inline constexpr std::uint64_t client_id_min = std::uint64_t{1} << 32;
inline constexpr std::uint64_t client_id_max = (std::uint64_t{1} << 53) - 1;

class slot;
struct job;

// Told when a job reaches a terminal state; a session that submitted jobs is one.
class job_observer {
 public:
  virtual ~job_observer() = default;
  virtual void job_ended(const job& j) = 0;
};

struct job {
  std::uint64_t id = 0;
  std::uint64_t seq = 0;  // submission order on this node (the job listing's order)
  job_spec spec;
  job_state state = job_state::queued;
  int attempts = 0;       // times it started
  int interruptions = 0;  // of them, ended by its worker dying (or its node lost)
  int failures = 0;       // of them, ended by the job failing and rerun
  // Nothing runs on its worker with it (no job placed behind it, none before it): it was in
  // flight when job code wrote to a worker's link, and which job did is known only once each
  // runs alone (worker_slot::on_link_abuse).
  bool run_alone = false;
  steady_clock::time_point submitted{}, started{}, finished{};
  double finished_unix = 0;  // when it ended, seconds since the epoch (--keep-finished-for, the journal)
  double run_seconds = 0;  // measured by the worker around the call itself
  std::string node;        // where the last attempt ran
  // Once terminal: JSON object members without braces, either
  //   "result":...,"stdout":"...","stderr":"..."  or  "error":{...},"stdout":"...","stderr":"..."
  std::string outcome;

  // Internal to the scheduler: the slot running it, and long-polls to wake when it ends.
  slot* running_on = nullptr;
  std::vector<std::weak_ptr<net::steady_timer>> waiters;
  std::weak_ptr<job_observer> observer;
};

// A job's end as a worker reports it ("<id> ok|error|skipped <seconds>") and as a peer does
// ("<tag> done|failed|cancelled|lost <seconds>"): one header line, then the outcome's JSON members.
struct reported_end {
  std::uint64_t id = 0;
  std::string_view word;     // ok, error, done, failed, ...
  double seconds = 0;        // the job's run time
  std::string_view outcome;  // "result":...,"stdout":...,"stderr":... or "error":{...},...
  // A worker's header may end with " retire": the job left behind what the worker cannot undo
  // (threads, alarms, signal handlers, children), so it must be replaced before the next job.
  bool retire = false;
  // Or with " retire-memory": the worker is over --max-worker-memory after the job (or the job
  // crossed it); it is replaced too.
  bool over_memory = false;
};
reported_end parse_reported_end(std::string_view message);

// The members of a failed job's outcome, for errors raised by ppgate itself rather than the job.
std::string error_outcome(std::string_view type, std::string_view message,
                          std::string_view traceback = {});

}  // namespace ppgate
