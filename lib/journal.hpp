// The durable journal (ppgate serve --journal PATH, docs/cli.md "Journal"): an SQLite database
// in WAL mode that holds every accepted job (its function, arguments and options, in the session
// format a peer gets: lib/job_message.hpp), its progress and its end. After a crash or a restart
// the node takes up from it: finished jobs keep their records and results, unfinished ones go
// back to the queue, a running one counting an interrupted attempt.
//
// Writes are batched: one transaction per turn of the event loop, committed after it, or at once
// by flush() (a REST submission is answered only after its jobs are committed). With
// synchronous=NORMAL, a commit survives the node being killed (kill -9); a power loss may lose
// the last commits.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "net.hpp"
#include "scheduler.hpp"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace ppgate {

struct journal_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class journal : public job_recorder {
 public:
  // Opens the database at `path`, creating it. Throws journal_error saying why it cannot be
  // used: not writable, not an SQLite database, corrupt, or another ppgate's.
  journal(const std::string& path, net::any_io_executor ex);
  ~journal() override;
  journal(const journal&) = delete;
  journal& operator=(const journal&) = delete;

  struct restore_summary {
    std::size_t finished = 0;   // records kept, with their results
    std::size_t requeued = 0;   // unfinished jobs run again
    std::size_t ended = 0;      // unfinished jobs ended lost (their session is gone, or too many restarts)
  };
  // Takes up what the journal holds, before the node serves: into `sched`, which records into
  // this journal from then on.
  restore_summary restore(scheduler& sched);

  void job_submitted(const job& j) override;
  void job_changed(const job& j) override;
  void job_ended(const job& j) override;
  void job_forgotten(const job& j) override;
  void flush() override;

 private:
  sqlite3_stmt* prepare(const char* sql);
  void exec(const char* sql);
  void begin();  // a transaction for this turn of the loop, committed after it
  // Runs `write` in this turn's transaction; a failure stops the journal, logged once.
  template <class Write>
  void record(Write&& write);
  std::int64_t function_row(const function_def& f);
  void keep_value(const shared_value& v);
  void fail(const char* what);  // throws journal_error with SQLite's message

  std::string path_;
  net::any_io_executor ex_;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_job_ = nullptr;
  sqlite3_stmt* update_job_ = nullptr;
  sqlite3_stmt* end_job_ = nullptr;
  sqlite3_stmt* delete_job_ = nullptr;
  sqlite3_stmt* insert_function_ = nullptr;
  sqlite3_stmt* insert_value_ = nullptr;
  sqlite3_stmt* delete_value_ = nullptr;
  bool in_transaction_ = false;
  bool failed_ = false;  // a write failed: logged once, and the journal stops
  std::unordered_map<std::string, std::int64_t> function_rows_;  // by function hash
  // Values put once that journaled jobs take, by key: how many of those jobs are kept.
  std::unordered_map<std::uint64_t, std::size_t> value_users_;
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> job_values_;  // unfinished job -> keys
  std::string scratch_;
};

}  // namespace ppgate
