#include "journal.hpp"

#include "job_message.hpp"
#include "job_parser.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "shared_memory.hpp"

#include <simdjson.h>
#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <utility>

namespace ppgate {

namespace {

constexpr const char* journal_format = "ppgate-journal-1";

// A job's state as the journal writes it, and back.
job_state state_named(std::string_view name) {
  for (auto s : {job_state::queued, job_state::running, job_state::done, job_state::failed, job_state::cancelled,
                 job_state::lost})
    if (to_string(s) == name) return s;
  return job_state::lost;
}

std::string column_text(sqlite3_stmt* s, int i) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  return text == nullptr ? std::string() : std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(s, i)));
}

void bind_text(sqlite3_stmt* s, int i, std::string_view text) {
  sqlite3_bind_text(s, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

}  // namespace

journal::journal(const std::string& path, net::any_io_executor ex) : path_(path), ex_(std::move(ex)) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK)
    fail("cannot open it");
  if (sqlite3_db_readonly(db_, "main") == 1) throw journal_error(path_ + ": the journal is not writable");
  sqlite3_busy_timeout(db_, 5000);
  // A database that is not one (or a damaged one) fails here, before anything is written.
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  {
    sqlite3_stmt* check = prepare("PRAGMA quick_check");
    std::string verdict;
    if (sqlite3_step(check) == SQLITE_ROW) verdict = column_text(check, 0);
    sqlite3_finalize(check);
    if (verdict != "ok") throw journal_error(path_ + ": the journal is damaged (" + verdict.substr(0, 200) + ")");
  }
  exec("BEGIN IMMEDIATE");  // writable, and nobody else's: a second node on it waits, then fails
  exec("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID");
  exec("CREATE TABLE IF NOT EXISTS functions(row INTEGER PRIMARY KEY, hash TEXT UNIQUE NOT NULL, "
       "entry TEXT NOT NULL, source TEXT NOT NULL, modules TEXT NOT NULL)");
  exec("CREATE TABLE IF NOT EXISTS refvals(key INTEGER PRIMARY KEY, value TEXT NOT NULL)");
  exec("CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, fn INTEGER NOT NULL, "
       "message TEXT NOT NULL, grp TEXT NOT NULL, codec TEXT NOT NULL, priority INTEGER NOT NULL, "
       "detach INTEGER NOT NULL, from_link INTEGER NOT NULL, refs TEXT NOT NULL, state TEXT NOT NULL, "
       "attempts INTEGER NOT NULL, interruptions INTEGER NOT NULL, failures INTEGER NOT NULL, "
       "node TEXT, outcome TEXT, run_seconds REAL, finished_at REAL)");
  {
    sqlite3_stmt* s = prepare("SELECT value FROM meta WHERE key = 'format'");
    std::string format;
    const bool found = sqlite3_step(s) == SQLITE_ROW;
    if (found) format = column_text(s, 0);
    sqlite3_finalize(s);
    if (!found) {
      exec("INSERT INTO meta VALUES('format', 'ppgate-journal-1')");
    } else if (format != journal_format) {
      throw journal_error(path_ + ": not a ppgate journal of this version (format '" + format.substr(0, 60) + "')");
    }
  }
  exec("COMMIT");
  insert_job_ = prepare(
      "INSERT OR REPLACE INTO jobs(id, seq, fn, message, grp, codec, priority, detach, from_link, refs, state, "
      "attempts, interruptions, failures) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  update_job_ = prepare("UPDATE jobs SET state = ?, attempts = ?, interruptions = ?, failures = ? WHERE id = ?");
  end_job_ = prepare(
      "UPDATE jobs SET state = ?, attempts = ?, interruptions = ?, failures = ?, node = ?, outcome = ?, "
      "run_seconds = ?, finished_at = ?, message = '' WHERE id = ?");
  delete_job_ = prepare("DELETE FROM jobs WHERE id = ?");
  insert_function_ = prepare("INSERT INTO functions(hash, entry, source, modules) VALUES(?, ?, ?, ?)");
  insert_value_ = prepare("INSERT OR REPLACE INTO refvals(key, value) VALUES(?, ?)");
  delete_value_ = prepare("DELETE FROM refvals WHERE key = ?");
}

journal::~journal() {
  try {
    flush();
  } catch (const std::exception& e) {
    log::error("journal ", path_, ": ", e.what());
  }
  for (auto* s : {insert_job_, update_job_, end_job_, delete_job_, insert_function_, insert_value_, delete_value_})
    sqlite3_finalize(s);
  sqlite3_close(db_);
}

void journal::fail(const char* what) {
  const std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
  throw journal_error(path_ + ": " + what + ": " + why);
}

sqlite3_stmt* journal::prepare(const char* sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK) fail("cannot use it");
  return s;
}

void journal::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string why = message != nullptr ? message : sqlite3_errmsg(db_);
    sqlite3_free(message);
    if (sqlite3_errcode(db_) == SQLITE_NOTADB) why = "not an SQLite database (" + why + ")";
    throw journal_error(path_ + ": " + why);
  }
}

void journal::begin() {
  if (in_transaction_) return;
  exec("BEGIN");
  in_transaction_ = true;
  // Everything recorded in this turn of the event loop commits together, after it.
  net::post(ex_, [this] {
    try {
      flush();
    } catch (const journal_error& e) {
      if (!std::exchange(failed_, true)) log::error("the journal stops recording: ", e.what());
    }
  });  // (not record(): that would begin another transaction)
}

void journal::flush() {
  if (!in_transaction_) return;
  in_transaction_ = false;
  exec("COMMIT");
}

std::int64_t journal::function_row(const function_def& f) {
  if (auto it = function_rows_.find(f.hash); it != function_rows_.end()) return it->second;
  sqlite3_reset(insert_function_);
  bind_text(insert_function_, 1, f.hash);
  bind_text(insert_function_, 2, f.entry);
  bind_text(insert_function_, 3, f.source);
  std::string modules;
  json_writer w(modules);
  w.begin_array();
  for (const auto& m : f.modules) w.value(m);
  w.end_array();
  bind_text(insert_function_, 4, modules);
  if (sqlite3_step(insert_function_) != SQLITE_DONE) fail("cannot record a function");
  const std::int64_t row = sqlite3_last_insert_rowid(db_);
  function_rows_.emplace(f.hash, row);
  return row;
}

void journal::keep_value(const shared_value& v) {
  if (value_users_[v.key]++ > 0) return;
  std::string inlined;
  try {
    shared_memory::append_inline(inlined, v.value);  // a value in a file: its bytes, inline
  } catch (const std::exception&) {
    inlined = v.value;
  }
  sqlite3_reset(insert_value_);
  sqlite3_bind_int64(insert_value_, 1, static_cast<sqlite3_int64>(v.key));
  bind_text(insert_value_, 2, inlined);
  if (sqlite3_step(insert_value_) != SQLITE_DONE) fail("cannot record a value");
}

template <class Write>
void journal::record(Write&& write) {
  if (failed_) return;
  try {
    begin();
    write();
  } catch (const journal_error& e) {
    // Jobs go on without the journal; saying so once is enough.
    if (!std::exchange(failed_, true)) log::error("the journal stops recording: ", e.what());
  }
}

// Binds a job's progress: its state, attempts, interrupted and failed attempts, from `first` on.
static void bind_progress(sqlite3_stmt* s, int first, const job& j) {
  bind_text(s, first, to_string(j.state));
  sqlite3_bind_int(s, first + 1, j.attempts);
  sqlite3_bind_int(s, first + 2, j.interruptions);
  sqlite3_bind_int(s, first + 3, j.failures);
}

void journal::job_submitted(const job& j) {
  record([&] {
    const auto fn = function_row(*j.spec.function);
    std::string refs;
    for (const auto& ref : j.spec.refs) {
      keep_value(*ref);
      job_values_[j.id].push_back(ref->key);
      if (!refs.empty()) refs += ',';
      refs += std::to_string(ref->key);
    }
    scratch_.clear();
    try {
      // As a peer gets it, arguments in files inline; the values it takes by key (kept apart).
      append_job_message(scratch_, j,
                         {.fn_id = fn, .with_options = true, .inline_shared_memory = true,
                          .receiver_has = [](const std::shared_ptr<const shared_value>&) { return true; }});
    } catch (const std::exception&) {
      scratch_.clear();  // its arguments cannot be read: it fails here too; restored, it fails
      append_job_message(scratch_, j, {.fn_id = fn, .with_options = true,
                                       .receiver_has = [](const std::shared_ptr<const shared_value>&) { return true; }});
    }
    sqlite3_stmt* s = insert_job_;
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(j.id));
    sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(j.seq));
    sqlite3_bind_int64(s, 3, fn);
    bind_text(s, 4, scratch_);
    bind_text(s, 5, j.spec.group);
    bind_text(s, 6, to_string(j.spec.codec));
    sqlite3_bind_int(s, 7, j.spec.priority);
    sqlite3_bind_int(s, 8, j.spec.detach);
    sqlite3_bind_int(s, 9, j.spec.from_link);
    bind_text(s, 10, refs);
    bind_progress(s, 11, j);
    if (sqlite3_step(s) != SQLITE_DONE) fail("cannot record a job");
  });
}

void journal::job_changed(const job& j) {
  record([&] {
    sqlite3_stmt* s = update_job_;
    sqlite3_reset(s);
    bind_progress(s, 1, j);
    sqlite3_bind_int64(s, 5, static_cast<sqlite3_int64>(j.id));
    if (sqlite3_step(s) != SQLITE_DONE) fail("cannot record a job");
  });
}

void journal::job_ended(const job& j) {
  record([&] {
    sqlite3_stmt* s = end_job_;
    sqlite3_reset(s);
    bind_progress(s, 1, j);
    bind_text(s, 5, j.node);
    bind_text(s, 6, j.outcome);
    sqlite3_bind_double(s, 7, j.run_seconds);
    sqlite3_bind_double(s, 8, j.finished_unix);
    sqlite3_bind_int64(s, 9, static_cast<sqlite3_int64>(j.id));
    if (sqlite3_step(s) != SQLITE_DONE) fail("cannot record a job's end");
    // An ended job runs no more: the values it took are kept only for jobs still to run.
    const auto taken = job_values_.find(j.id);
    if (taken == job_values_.end()) return;
    for (const auto key : taken->second) {
      auto it = value_users_.find(key);
      if (it == value_users_.end() || --it->second > 0) continue;
      value_users_.erase(it);
      sqlite3_reset(delete_value_);
      sqlite3_bind_int64(delete_value_, 1, static_cast<sqlite3_int64>(key));
      if (sqlite3_step(delete_value_) != SQLITE_DONE) fail("cannot forget a value");
    }
    job_values_.erase(taken);
  });
}

void journal::job_forgotten(const job& j) {
  record([&] {
    sqlite3_reset(delete_job_);
    sqlite3_bind_int64(delete_job_, 1, static_cast<sqlite3_int64>(j.id));
    if (sqlite3_step(delete_job_) != SQLITE_DONE) fail("cannot forget a job");
  });
}

journal::restore_summary journal::restore(scheduler& sched) {
  restore_summary summary;
  session_tables tables;  // what the journaled messages name: functions by row, values by key
  {
    sqlite3_stmt* s = prepare("SELECT row, hash, entry, source, modules FROM functions");
    simdjson::dom::parser parser;
    while (sqlite3_step(s) == SQLITE_ROW) {
      function_def def;
      def.hash = column_text(s, 1);
      def.entry = column_text(s, 2);
      def.source = column_text(s, 3);
      simdjson::dom::array modules;
      if (parser.parse(column_text(s, 4)).get_array().get(modules) == simdjson::SUCCESS)
        for (auto m : modules)
          if (std::string_view name; m.get_string().get(name) == simdjson::SUCCESS) def.modules.emplace_back(name);
      const auto row = sqlite3_column_int64(s, 0);
      function_rows_[def.hash] = row;
      tables.functions[row] = sched.intern(std::move(def));
    }
    sqlite3_finalize(s);
  }
  {
    sqlite3_stmt* s = prepare("SELECT key, value FROM refvals");
    std::uint64_t highest = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
      const auto key = static_cast<std::uint64_t>(sqlite3_column_int64(s, 0));
      highest = std::max(highest, key);
      tables.refs[static_cast<std::int64_t>(key)] =
          std::make_shared<const shared_value>(shared_value{key, column_text(s, 1), nullptr, false});
    }
    sqlite3_finalize(s);
    reserve_shared_value_keys(highest);
  }
  sched.set_recorder(this);
  begin();
  sqlite3_stmt* s = prepare(
      "SELECT id, seq, fn, message, grp, codec, priority, detach, from_link, refs, state, attempts, "
      "interruptions, failures, node, outcome, run_seconds, finished_at FROM jobs ORDER BY seq");
  while (sqlite3_step(s) == SQLITE_ROW) {
    restored_job r;
    r.id = static_cast<std::uint64_t>(sqlite3_column_int64(s, 0));
    r.seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 1));
    const auto function = tables.functions.find(sqlite3_column_int64(s, 2));
    std::string message = column_text(s, 3);
    r.state = state_named(column_text(s, 10));
    r.attempts = sqlite3_column_int(s, 11);
    r.interruptions = sqlite3_column_int(s, 12);
    r.failures = sqlite3_column_int(s, 13);
    r.node = column_text(s, 14);
    r.outcome = column_text(s, 15);
    r.run_seconds = sqlite3_column_double(s, 16);
    r.finished_unix = sqlite3_column_double(s, 17);
    job_spec spec;
    spec.group = column_text(s, 4);
    spec.codec = column_text(s, 5) == "pickle" ? arg_codec::pickle : arg_codec::json;
    spec.priority = sqlite3_column_int(s, 6);
    spec.detach = sqlite3_column_int(s, 7) != 0;
    spec.from_link = sqlite3_column_int(s, 8) != 0;
    if (function == tables.functions.end()) {
      // (Only a hand-edited journal gets here.)
      function_def unknown;
      unknown.entry = "?";
      unknown.hash = "journal-unknown";
      spec.function = sched.intern(std::move(unknown));
      if (!is_terminal(r.state)) {
        r.state = job_state::failed;
        r.outcome = error_outcome("JournalError", "the journal does not hold this job's function");
      }
    } else {
      spec.function = function->second;
    }
    const auto end_here = [&](job_state state, std::string outcome) {
      r.state = state;
      r.outcome = std::move(outcome);
      r.finished_unix = unix_now();
      job_ended(sched.restore(std::move(spec), r));
      ++summary.ended;
    };
    if (is_terminal(r.state)) {
      sched.restore(std::move(spec), r);
      ++summary.finished;
      continue;
    }
    if (spec.from_link && !spec.detach) {
      end_here(job_state::lost, error_outcome("NodeRestarted",
                                              "the node restarted, and the session or peer link that submitted this "
                                              "job went with it (submit with detach to have it run on)"));
      continue;
    }
    // Its message, parsed as a peer's: arguments, options, the values it takes.
    job_submission parsed;
    try {
      parsed = parse_job_submission(message, [&](function_def d) { return sched.intern(std::move(d)); }, &tables);
    } catch (const request_error& e) {
      end_here(job_state::failed, error_outcome("JournalError", std::string("the job cannot be taken up: ") + e.what()));
      continue;
    }
    job_spec restored = std::move(parsed.jobs.at(0));
    restored.detach = spec.detach;
    restored.from_link = spec.from_link;
    if (r.state == job_state::running) {
      // It was running when the node stopped: that attempt was interrupted, as by a lost node.
      const int budget = std::max(restored.retries, scheduler::node_loss_retries);
      if (++r.interruptions > budget) {
        spec = std::move(restored);
        end_here(job_state::lost, error_outcome("NodeRestarted", "the node restarted while the job ran (attempt " +
                                                                     std::to_string(r.interruptions) + " of " +
                                                                     std::to_string(budget + 1) + ")"));
        continue;
      }
    }
    r.state = job_state::queued;
    for (const auto& ref : restored.refs) {
      ++value_users_[ref->key];
      job_values_[r.id].push_back(ref->key);
    }
    job_changed(sched.restore(std::move(restored), r));
    ++summary.requeued;
  }
  sqlite3_finalize(s);
  // Values no job to run takes any more.
  for (const auto& [key, value] : tables.refs) {
    if (value_users_.contains(static_cast<std::uint64_t>(key))) continue;
    sqlite3_reset(delete_value_);
    sqlite3_bind_int64(delete_value_, 1, key);
    sqlite3_step(delete_value_);
  }
  flush();
  return summary;
}

}  // namespace ppgate
