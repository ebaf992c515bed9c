#include "options.hpp"

#include "adopted_process.hpp"
#include "frame.hpp"

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/socket.h>
#include <sys/stat.h>
#include <string_view>
#include <unistd.h>
#include <utility>
#include <vector>

#ifndef PPGATE_VERSION
#define PPGATE_VERSION "0.0.0"
#endif

extern char** environ;

namespace ppgate {

namespace {

template <class Int>
Int parse_int(std::string_view flag, std::string_view text, Int min, Int max) {
  Int value{};
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || p != text.data() + text.size() || value < min || value > max)
    throw usage_error(std::string(flag) + " expects a whole number from " + std::to_string(min) +
                      " to " + std::to_string(max) + ", not '" + std::string(text) + "'");
  return value;
}

// --adopt-from FD: the descriptor must be an open Unix stream socket. Anything else is refused
// now, not found out when the node waits on it for workers.
int parse_adoption_channel(std::string_view text) {
  const int fd = parse_int<int>("--adopt-from", text, 3, 1 << 20);
  if (!is_unix_stream_socket(fd))
    throw usage_error("--adopt-from " + std::string(text) + ": descriptor " + std::string(text) +
                      " is not an open Unix stream socket");
  return fd;
}

// --listen-fd FD: the descriptor must be a TCP socket that listens (the caller bound it and
// connects at once, before this node runs: its connections wait in the socket's backlog).
// Where it is bound becomes listen_host and listen_port, so the checks of --listen apply.
void parse_listening_socket(std::string_view text, serve_options& o) {
  const int fd = parse_int<int>("--listen-fd", text, 3, 1 << 20);
  int type = 0, listening = 0;
  socklen_t len = sizeof type;
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  const bool stream = ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
  len = sizeof listening;
  const bool accepting = stream && ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
  const bool ip = accepting && ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) == 0 &&
                  (bound.ss_family == AF_INET || bound.ss_family == AF_INET6);
  if (!ip)
    throw usage_error("--listen-fd " + std::string(text) + ": descriptor " + std::string(text) +
                      " is not a listening TCP socket");
  boost::asio::ip::tcp::endpoint endpoint;
  std::memcpy(endpoint.data(), &bound, bound_len);
  endpoint.resize(bound_len);
  o.listen_host = endpoint.address().to_string();
  o.listen_port = endpoint.port();
  o.listen_fd = fd;
}

// A number of seconds from min to max, as milliseconds.
std::chrono::milliseconds parse_seconds(std::string_view flag, std::string_view text, double min, double max) {
  double seconds = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  if (ec != std::errc() || p != text.data() + text.size() || !(seconds >= min) || seconds > max) {
    std::ostringstream message;
    message << flag << " expects a number of seconds from " << min << " to " << max;
    throw usage_error(message.str());
  }
  return std::chrono::milliseconds(static_cast<long>(seconds * 1000));
}

std::string read_secret_file(const std::string& path, std::vector<std::string>& warnings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw usage_error("--secret-file: cannot read '" + path + "'");
  // As ssh does for keys, though only as a warning: a secret others can read is no secret.
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    warnings.push_back("the secret file '" + path + "' can be read by other users (mode " + mode +
                       "); chmod 600 it");
  }
  std::stringstream s;
  s << in.rdbuf();
  std::string secret = s.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r' || secret.back() == ' '))
    secret.pop_back();
  if (secret.empty()) throw usage_error("--secret-file: '" + path + "' is empty");
  return secret;
}

// "1073741824", "512M", "2G", "64KiB" (powers of 1024), from min to max bytes.
std::uint64_t parse_bytes(std::string_view flag, std::string_view text, std::uint64_t min, std::uint64_t max) {
  std::uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  std::string_view unit(p, static_cast<std::size_t>(text.data() + text.size() - p));
  static constexpr std::pair<std::string_view, int> units[] = {
      {"", 0},    {"B", 0},    {"K", 10},  {"k", 10},   {"KiB", 10}, {"KB", 10}, {"M", 20}, {"MiB", 20},
      {"MB", 20}, {"G", 30},   {"GiB", 30}, {"GB", 30}, {"T", 40},   {"TiB", 40}, {"TB", 40}};
  int shift = -1;
  for (const auto& [name, bits] : units)
    if (unit == name) shift = bits;
  const bool fits = shift >= 0 && (value >> (64 - 1 - shift)) == 0;
  if (ec != std::errc() || p == text.data() || !fits || (value << shift) < min || (value << shift) > max)
    throw usage_error(std::string(flag) + " expects a size from " + std::to_string(min >> 20) + " MiB to " +
                      std::to_string(max >> 30) + " GiB, in bytes or with K, M, G or T (powers of 1024), not '" +
                      std::string(text) + "'");
  return value << shift;
}

// "HOST:PORT" for a peer to dial: any host name.
std::pair<std::string, std::uint16_t> parse_peer(std::string_view flag, std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw usage_error(std::string(flag) + " expects HOST:PORT, not '" + std::string(text) + "'");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0)
      throw usage_error(std::string(flag) + " expects HOST:PORT, not '" + std::string(text) + "'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  return {std::string(host), parse_int<std::uint16_t>(std::string(flag) + " port", port, 1, 65535)};
}

// "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT".
void parse_listen(std::string_view text, serve_options& o) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw usage_error("--listen expects HOST:PORT, such as 127.0.0.1:8080 or [::1]:8080");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (const auto colon = text.rfind(':'); colon != std::string_view::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  } else {
    port = text;
  }
  if (host.empty() || host == "localhost") host = "127.0.0.1";
  boost::system::error_code ec;
  boost::asio::ip::make_address(std::string(host), ec);
  if (ec) throw usage_error("--listen: '" + std::string(host) + "' is not an IP address");
  o.listen_host = std::string(host);
  o.listen_port = parse_int<std::uint16_t>("--listen port", port, 0, 65535);
}

// One flag or value, and where it came from: "FILE line N" for a --config file's, empty for
// the command line's.
struct config_setting {
  std::string text;
  std::string origin;
};

// A value of the config file: "text" (with \" \\ \n \t escapes), 'text', a bare word or number.
std::string config_scalar(std::string_view v, const std::string& where) {
  if (v.empty()) throw usage_error(where + ": a value is missing");
  if (v.front() == '\'') {
    if (v.size() < 2 || v.back() != '\'') throw usage_error(where + ": a quoted value does not end");
    return std::string(v.substr(1, v.size() - 2));
  }
  if (v.front() != '"') {
    if (v.find_first_of(" \t\"'") != std::string_view::npos)
      throw usage_error(where + ": put a value with spaces or quotes in \"double quotes\"");
    return std::string(v);
  }
  std::string out;
  for (std::size_t i = 1; i < v.size(); ++i) {
    const char c = v[i];
    if (c == '"') {
      if (i + 1 != v.size()) throw usage_error(where + ": text after a quoted value");
      return out;
    }
    if (c == '\\' && i + 1 < v.size()) {
      const char e = v[++i];
      out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      continue;
    }
    out += c;
  }
  throw usage_error(where + ": a quoted value does not end");
}

// --config FILE: "key = value" lines (TOML or INI): a key is a flag's name without its dashes
// ("max-worker-memory", or "max_worker_memory"); true/false for flags that take no value; a
// list ["a", "b"] or a comma-separated value for --peers and --join. '#' and ';' start comments;
// a [serve] section header is allowed, no other.
std::vector<config_setting> read_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw usage_error("--config: cannot read '" + path + "'");
  std::vector<config_setting> out;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string where = path + " line " + std::to_string(number);
    auto trim = [](std::string_view s) {
      const auto b = s.find_first_not_of(" \t\r");
      if (b == std::string_view::npos) return std::string_view{};
      return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
    };
    std::string_view text = trim(line);
    if (text.empty() || text.front() == '#' || text.front() == ';') continue;
    if (text.front() == '[') {
      if (text != "[serve]") throw usage_error(where + ": only a [serve] section is known, not " + std::string(text));
      continue;
    }
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) throw usage_error(where + ": expected 'key = value'");
    std::string key(trim(text.substr(0, eq)));
    std::string_view value = trim(text.substr(eq + 1));
    // A comment after a value, outside quotes.
    bool quoted = false;
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (value[i] == '"' && (i == 0 || value[i - 1] != '\\')) quoted = !quoted;
      if (!quoted && value[i] == '#' && (i == 0 || value[i - 1] == ' ' || value[i - 1] == '\t')) {
        value = trim(value.substr(0, i));
        break;
      }
    }
    std::replace(key.begin(), key.end(), '_', '-');
    if (key.empty() || key.starts_with("-") || key.find_first_of(" \t") != std::string::npos)
      throw usage_error(where + ": '" + key + "' is not a key");
    if (key == "config") throw usage_error(where + ": a config file cannot name another");
    const std::string flag = "--" + key;
    if (value == "true") {
      out.push_back({flag, where});
    } else if (value == "false") {
      // Flags that take no value are off unless given: nothing to pass.
    } else if (!value.empty() && value.front() == '[') {
      if (value.back() != ']') throw usage_error(where + ": a list does not end with ]");
      std::string joined;
      std::string_view items = trim(value.substr(1, value.size() - 2));
      while (!items.empty()) {
        std::size_t end = 0;
        if (items.front() == '"' || items.front() == '\'') {
          end = items.find(items.front(), 1);
          if (end == std::string_view::npos) throw usage_error(where + ": a quoted value does not end");
          ++end;
        } else {
          end = std::min(items.find(','), items.size());
        }
        if (!joined.empty()) joined += ',';
        joined += config_scalar(trim(items.substr(0, end)), where);
        items = trim(items.substr(end));
        if (!items.empty()) {
          if (items.front() != ',') throw usage_error(where + ": list items go between commas");
          items = trim(items.substr(1));
        }
      }
      out.push_back({flag, where});
      out.push_back({joined, where});
    } else {
      out.push_back({flag, where});
      out.push_back({config_scalar(value, where), where});
    }
  }
  return out;
}

}  // namespace

std::string help_text() {
  return R"(ppgate )" PPGATE_VERSION R"( - Parallel Python jobs over HTTP

usage:
  ppgate serve [options]     run a node: workers, REST API and stats page
  ppgate --help              this text
  ppgate --version           the version

serve options (each may also be set in a --config file):
  --config FILE          read settings from FILE first, "key = value" lines (TOML or INI): a
                         key is an option's name without its dashes, true for options that
                         take no value; options on the command line override the file's
  --listen HOST:PORT     address of the HTTP API (default 127.0.0.1:8080; port 0 picks a free
                         port, printed on the first line of standard output)
  --listen-fd FD         serve the HTTP API on the inherited TCP socket FD, already bound and
                         listening, instead (the Python client's private node: the client
                         connects before the node runs)
  --workers N|auto       local worker processes (default auto: one per usable CPU; 0 to 1024)
  --secret-file PATH     read the secret from PATH; clients then send
                         'Authorization: Bearer <secret>' with every request
  --secret-env NAME      read the secret from environment variable NAME
                         (PPGATE_SECRET is read when neither option is given)
  --insecure             allow a non-loopback --listen address without a secret
                         (anyone who can connect can run code on this machine)
  --python PATH          the Python interpreter workers run (default python3 on PATH): any
                         CPython 3.8 or later, a venv's or a conda env's; jobs import what it can.
                         Checked at start: one that cannot run the worker is refused, saying why
  --python-version V     skip that check: the caller vouches that --python is CPython V (the
                         Python client's private node passes its own interpreter's version)
  --restart              start a fresh worker process after every job (pp's restart=True)
  --max-jobs-per-worker N  a fresh worker process after every N jobs (a leaking library is
                         reset; no job waits behind the last one)
  --max-worker-memory SIZE  a worker whose resident memory is over SIZE after a job is replaced;
                         a job that takes it over fails with WorkerMemoryError (SIZE in bytes,
                         or 512M, 2G; at least 16M). A cgroup v2 limit where the node may make
                         cgroups, else RLIMIT_AS (docs/cli.md)
  --journal PATH         record accepted jobs, their progress and results in the SQLite database
                         PATH (created if missing): after a crash or restart the node queues
                         again what had not finished and serves the results of what had
                         (--keep-finished of them); docs/cli.md, "Journal"
  --pid-file PATH        write the process id to PATH; removed at exit
  --idle-exit SECONDS    exit after SECONDS with no connection and no queued or running job
  --drain-timeout SECONDS  on SIGTERM, how long running jobs may take to finish (default 30;
                         0 stops at once); a second SIGTERM stops at once too
  --max-body BYTES       largest request body and session message accepted (default 67108864,
                         at most 267386880)
  --max-header BYTES     largest request header accepted (default 16384)
  --max-connections N    simultaneous HTTP connections (default 512); at the limit the busiest
                         client address's oldest idle connection makes room, else 503
  --idle-timeout SECONDS close a connection idle or sending slower than this (default 60)
  --header-timeout SECONDS  a request head, once begun, must arrive whole within this (default 10)
  --keep-finished N      finished jobs kept for GET /v1/jobs/{id} (default 100000)
  --keep-finished-bytes BYTES  at most this much of their results and output (default 536870912);
                         the oldest finished jobs are forgotten first
  --keep-finished-for SECONDS  and each for at most SECONDS after it ended (default: no limit)
  --worker-dir DIR       the folder of ppgate_worker.py and its extension module (default:
                         found next to ppgate, in its build tree, or in ../libexec/ppgate;
                         also PPGATE_WORKER_DIR)
  --log-level LEVEL      debug, info, warn or error (default info)
  --log-format FORMAT    text (default) or json: one object per line, with time, level, pid
                         and message
  --parent-pid PID       stop when process PID exits (the Python client's private nodes use it)
  --adopt-from FD        take the worker processes the caller sends on the Unix socket FD as
                         the first slots' first processes (the Python client forks itself into
                         these so that its first jobs wait for no interpreter to start)
  --stats-interval SECONDS  time between snapshots on the /v1/events stream (default 1; 0.05 to 60)
  --busy-poll MICROSECONDS  after sending results to a job session, while no job runs, poll
                         this long before sleeping, so the client's next job is seen at once
                         (default 100; 0 disables; off on a single CPU)

peers (docs/peers.md; peers authenticate each other with the secret):
  --peer-listen HOST:PORT  accept peers here: run their jobs on this node's workers (ppserver)
  --peers HOST:PORT,...    dial these nodes and use their workers (pp.Server(ppservers=...))
  --join HOST:PORT,...     dial these heads' peer ports and offer them this node's workers
                           (repeatable; docs/clusters.md)
  --advertise HOST:PORT    the address this node gives peers (default: the --peer-listen one)
  --peer-secret-env NAME   the peers' shared secret from variable NAME (default: the secret)
  --peer-secret-file PATH  the peers' shared secret from PATH
  --peer-inflight N        jobs kept in flight per slot of a peer, beyond the first only jobs
                           known to be short (default 8)
  --peer-heartbeat SECONDS a ping every SECONDS; a peer silent for 5 of them is cut off (default 1)
  --discover               find nodes of the same cluster on the local network (UDP broadcast)
                           and use them once they prove the secret; announce this node if it
                           has --peer-listen
  --cluster NAME           the cluster discovery looks for (default ppgate)
  --discover-port PORT     the UDP port discovery uses (default 7099)
  --tls-cert PATH          encrypt peer links with TLS, presenting this certificate (PEM)
  --tls-key PATH           the certificate's private key (PEM)
  --tls-ca PATH            require the other side's certificate to chain to this CA (PEM)

signals: SIGINT and SIGTERM stop the node and its workers; SIGUSR1 prints pp's statistics table.
The REST API is described in docs/rest.md.
)";
}

parsed_command parse_command_line(int argc, const char* const* argv) {
  parsed_command out;
  if (argc < 2) throw usage_error("missing command; try 'ppgate serve' or 'ppgate --help'");
  const std::string_view cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return out;
  if (cmd == "--version" || cmd == "-V") {
    out.what = command::version;
    return out;
  }
  if (cmd != "serve") throw usage_error("unknown command '" + std::string(cmd) + "'; try 'ppgate --help'");
  out.what = command::serve;
  serve_options& o = out.serve;
  // --config FILE: its settings come first, as flags, so the command line's override them.
  std::vector<config_setting> args;
  std::vector<std::string> given(argv + 2, argv + argc);
  for (std::size_t i = 0; i < given.size(); ++i) {
    std::string_view a = given[i];
    if (a == "--config" || a.starts_with("--config=")) {
      std::string path = a == "--config" ? (i + 1 < given.size() ? given[i + 1] : "") : std::string(a.substr(9));
      if (path.empty()) throw usage_error("--config needs a value");
      args = read_config_file(path);
      given.erase(given.begin() + static_cast<std::ptrdiff_t>(i),
                  given.begin() + static_cast<std::ptrdiff_t>(a == "--config" ? i + 2 : i + 1));
      break;
    }
  }
  const std::size_t from_command_line = args.size();
  for (auto& g : given) args.push_back({std::move(g), {}});
  bool peers_from_file = false, join_from_file = false, listen_given = false;
  std::string secret_file, secret_env, peer_secret_file, peer_secret_env;
  for (std::size_t i = 0; i < args.size(); ++i) try {
    const bool in_file = i < from_command_line;
    std::string_view flag = args[i].text;
    std::string_view value;
    bool has_inline_value = false;
    if (const auto eq = flag.find('='); flag.starts_with("--") && eq != std::string_view::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_inline_value = true;
    }
    auto take_value = [&]() -> std::string_view {
      if (has_inline_value) return value;
      if (i + 1 >= args.size()) throw usage_error(std::string(flag) + " needs a value");
      return args[++i].text;
    };
    // A list the command line gives replaces the file's, as any other setting does.
    if (!in_file && flag == "--peers" && std::exchange(peers_from_file, false)) o.peers.dial.clear();
    if (!in_file && flag == "--join" && std::exchange(join_from_file, false)) o.peers.join.clear();
    if (in_file && flag == "--peers") peers_from_file = true;
    if (in_file && flag == "--join") join_from_file = true;
    auto no_value = [&]() {
      if (has_inline_value) throw usage_error(std::string(flag) + " takes no value");
    };
    if (flag == "--help" || flag == "-h") {
      out.what = command::help;
      return out;
    } else if (flag == "--config") {
      throw usage_error(in_file ? "a config file cannot name another" : "--config may be given once");
    } else if (flag == "--listen") {
      parse_listen(take_value(), o);
      listen_given = true;
    } else if (flag == "--listen-fd") {
      parse_listening_socket(take_value(), o);
    } else if (flag == "--workers") {
      const auto v = take_value();
      if (v == "auto") o.workers.reset();
      else o.workers = parse_int<std::size_t>(flag, v, 0, 1024);
    } else if (flag == "--secret-file") {
      secret_file = take_value();
    } else if (flag == "--secret-env") {
      secret_env = take_value();
    } else if (flag == "--secret" || flag == "--token") {
      throw usage_error(std::string(flag) + " is not accepted: a secret on the command line is visible "
                        "to every user of this machine; use --secret-file or --secret-env");
    } else if (flag == "--insecure") {
      no_value();
      o.insecure = true;
    } else if (flag == "--max-jobs-per-worker") {
      o.max_jobs_per_worker = parse_int<std::size_t>(flag, take_value(), 1, 1000000000);
    } else if (flag == "--max-worker-memory") {
      o.max_worker_memory = parse_bytes(flag, take_value(), std::uint64_t(16) << 20, std::uint64_t(1) << 50);
    } else if (flag == "--restart") {
      no_value();
      o.max_jobs_per_worker = 1;
    } else if (flag == "--journal") {
      o.journal = take_value();
      if (o.journal.empty()) throw usage_error("--journal: give the path of the journal's database file");
    } else if (flag == "--pid-file") {
      o.pid_file = take_value();
    } else if (flag == "--drain-timeout") {
      o.drain_timeout = parse_seconds(flag, take_value(), 0, 86400);
    } else if (flag == "--idle-exit") {
      o.idle_exit = std::chrono::seconds(parse_int<long>(flag, take_value(), 1, 86400 * 365));
    } else if (flag == "--max-body") {
      // At most what a worker's frame carries (lib/frame.hpp), less room for the frame's own header.
      o.max_body_bytes = parse_int<std::size_t>(flag, take_value(), 1024, max_frame_size - 1024 * 1024);
    } else if (flag == "--max-header") {
      o.max_header_bytes = parse_int<std::size_t>(flag, take_value(), 1024, 1024 * 1024);
    } else if (flag == "--max-connections") {
      o.max_connections = parse_int<std::size_t>(flag, take_value(), 1, 100000);
    } else if (flag == "--idle-timeout") {
      o.idle_timeout = std::chrono::seconds(parse_int<long>(flag, take_value(), 1, 86400));
    } else if (flag == "--header-timeout") {
      o.header_timeout = std::chrono::seconds(parse_int<long>(flag, take_value(), 1, 86400));
    } else if (flag == "--keep-finished") {
      o.keep_finished = parse_int<std::size_t>(flag, take_value(), 1, 100000000);
    } else if (flag == "--keep-finished-for") {
      o.keep_finished_for = std::chrono::seconds(parse_int<long>(flag, take_value(), 1, 86400L * 3650));
    } else if (flag == "--keep-finished-bytes") {
      o.keep_finished_bytes = parse_int<std::size_t>(flag, take_value(), 1024 * 1024, std::size_t(1) << 40);
    } else if (flag == "--worker-dir") {
      o.worker_dir = take_value();
    } else if (flag == "--python") {
      o.python = take_value();
      if (o.python.empty()) throw usage_error("--python: give the path or name of a Python interpreter");
    } else if (flag == "--python-version") {
      o.python_version = take_value();
      const bool plausible = o.python_version.starts_with("3.") && o.python_version.size() <= 32 &&
                             o.python_version.find_first_not_of("0123456789.abrc+") == std::string::npos;
      if (!plausible) throw usage_error("--python-version: give a CPython version such as 3.11.2");
    } else if (flag == "--peer-listen") {
      serve_options scratch;
      parse_listen(take_value(), scratch);
      o.peers.listen_host = scratch.listen_host;
      o.peers.listen_port = scratch.listen_port;
    } else if (flag == "--peers" || flag == "--join") {
      auto& addresses = flag == "--peers" ? o.peers.dial : o.peers.join;
      std::string_view list = take_value();
      while (!list.empty()) {
        const auto comma = list.find(',');
        const auto item = list.substr(0, comma);
        if (!item.empty()) addresses.push_back(parse_peer(flag, item));
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
    } else if (flag == "--advertise") {
      const auto v = take_value();
      parse_peer(flag, v);
      o.peer.name = std::string(v);
    } else if (flag == "--peer-secret-env") {
      peer_secret_env = take_value();
    } else if (flag == "--peer-secret-file") {
      peer_secret_file = take_value();
    } else if (flag == "--peer-heartbeat") {
      o.peer.heartbeat = parse_seconds(flag, take_value(), 0.05, 60);
    } else if (flag == "--discover") {
      no_value();
      o.peers.discover = true;
    } else if (flag == "--cluster") {
      o.peers.cluster = take_value();
      if (o.peers.cluster.empty() || o.peers.cluster.find_first_of(" \t\n") != std::string::npos)
        throw usage_error("--cluster expects a name without spaces");
    } else if (flag == "--discover-port") {
      o.peers.discover_port = parse_int<std::uint16_t>(flag, take_value(), 1, 65535);
    } else if (flag == "--peer-inflight") {
      o.peers.inflight_per_slot = parse_int<std::size_t>(flag, take_value(), 1, 64);
    } else if (flag == "--tls-cert") {
      o.peer.tls.cert_file = take_value();
    } else if (flag == "--tls-key") {
      o.peer.tls.key_file = take_value();
    } else if (flag == "--tls-ca") {
      o.peer.tls.ca_file = take_value();
    } else if (flag == "--stats-interval") {
      o.stats_interval = parse_seconds(flag, take_value(), 0.05, 60);
    } else if (flag == "--busy-poll") {
      o.busy_poll = std::chrono::microseconds(parse_int<long>(flag, take_value(), 0, 10000));
    } else if (flag == "--parent-pid") {
      o.parent_pid = parse_int<long>(flag, take_value(), 1, 1L << 30);
    } else if (flag == "--adopt-from") {
      o.adopt_from = parse_adoption_channel(take_value());
    } else if (flag == "--log-format") {
      o.log_format = take_value();
      if (o.log_format != "text" && o.log_format != "json")
        throw usage_error("--log-format expects text or json");
    } else if (flag == "--log-level") {
      o.log_level = take_value();
      if (o.log_level != "debug" && o.log_level != "info" && o.log_level != "warn" &&
          o.log_level != "error")
        throw usage_error("--log-level expects debug, info, warn or error");
    } else {
      throw usage_error("unknown option '" + std::string(flag) + "'; try 'ppgate serve --help'");
    }
  } catch (const usage_error& e) {
    if (args[i].origin.empty()) throw;
    throw usage_error(args[i].origin + ": " + e.what());
  }

  if (!peer_secret_file.empty()) o.peer.secret = read_secret_file(peer_secret_file, o.warnings);
  if (!peer_secret_env.empty()) {
    const char* v = std::getenv(peer_secret_env.c_str());
    if (v == nullptr || *v == '\0') throw usage_error("--peer-secret-env: " + peer_secret_env + " is not set");
    o.peer.secret = v;
    o.secret_variables.push_back(peer_secret_env);
  }
  if (listen_given && o.listen_fd >= 0)
    throw usage_error("give either --listen or --listen-fd, not both");
  if (!secret_file.empty() && !secret_env.empty())
    throw usage_error("give either --secret-file or --secret-env, not both");
  if (!secret_file.empty()) {
    o.secret = read_secret_file(secret_file, o.warnings);
  } else {
    const std::string name = secret_env.empty() ? "PPGATE_SECRET" : secret_env;
    const char* v = std::getenv(name.c_str());
    if (v != nullptr && *v != '\0') o.secret = v;
    else if (!secret_env.empty()) throw usage_error("--secret-env: " + name + " is not set");
    o.secret_variables.push_back(name);
  }
  const auto blank = [](const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; };
  if (!o.secret.empty() && (o.secret.size() < 8 || blank(o.secret)))
    throw usage_error("the secret must be at least 8 characters long, not all blanks");
  if (!o.peer.secret.empty() && blank(o.peer.secret))
    throw usage_error("the peers' secret must not be all blanks");
  const bool peering =
      !o.peers.listen_host.empty() || !o.peers.dial.empty() || !o.peers.join.empty() || o.peers.discover;
  if (o.peer.secret.empty()) o.peer.secret = o.secret;
  if (peering && o.peer.secret.empty())
    throw usage_error("peers authenticate each other with a shared secret: give --secret-file, "
                      "--secret-env or --peer-secret-env");
  if (!o.peer.secret.empty() && o.peer.secret.size() < 8)
    throw usage_error("the peers' secret must be at least 8 characters long");
  if (o.peer.tls.cert_file.empty() != o.peer.tls.key_file.empty())
    throw usage_error("--tls-cert and --tls-key go together");
  if (!o.peer.tls.ca_file.empty() && o.peer.tls.cert_file.empty())
    throw usage_error("--tls-ca needs --tls-cert and --tls-key");
  if (o.peer.name.empty() && !o.peers.listen_host.empty())
    o.peer.name = o.peers.listen_host + ":" + std::to_string(o.peers.listen_port);
  if (o.peer.name.empty() && !o.peers.join.empty()) {
    // A joining node without a peer port of its own is known to its heads by host and process.
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    o.peer.name = std::string(host) + "-" + std::to_string(::getpid());
  }
  if (o.adopt_from >= 0 && o.max_worker_memory != 0)
    throw usage_error("--adopt-from: an adopted worker cannot be held to --max-worker-memory");
  const bool loopback = boost::asio::ip::make_address(o.listen_host).is_loopback();
  if (!loopback && o.secret.empty() && !o.insecure)
    throw usage_error("--listen " + o.listen_host +
                      " is not a loopback address: give a secret (--secret-file or --secret-env) "
                      "or, to run without one, --insecure");
  return out;
}

std::string locate_worker_script(const std::string& configured) {
  namespace fs = std::filesystem;
  static constexpr const char* script = "ppgate_worker.py";
  auto complete = [](const fs::path& dir) {
    std::error_code ec;
    return fs::is_regular_file(dir / script, ec) && fs::is_regular_file(dir / "_ppgate_worker.abi3.so", ec) &&
           fs::is_regular_file(dir / "ppgate_worker_runtime.py", ec);
  };
  const auto given = [&](const std::string& dir, const std::string& what) {
    if (!complete(dir))
      throw usage_error(what + ": '" + dir + "' does not hold " + script +
                        ", _ppgate_worker.abi3.so and ppgate_worker_runtime.py");
    return fs::absolute(fs::path(dir) / script).string();
  };
  if (!configured.empty()) return given(configured, "--worker-dir");
  if (const char* env = std::getenv("PPGATE_WORKER_DIR"); env != nullptr && *env != '\0')
    return given(env, "PPGATE_WORKER_DIR");
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path bin = self.parent_path();
    for (const fs::path& dir : {bin, bin.parent_path() / "worker", bin.parent_path() / "libexec" / "ppgate"})
      if (complete(dir)) return (dir / script).string();
  }
  throw usage_error("cannot find the worker (ppgate_worker.py and _ppgate_worker.abi3.so) next to ppgate; "
                    "give --worker-dir or PPGATE_WORKER_DIR");
}

void forget_secret_variables(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    // unsetenv() drops the pointer only; /proc/<pid>/environ shows the original strings, which
    // the kernel placed on this process's stack: blank the value there first.
    const std::string prefix = name + "=";
    for (char** e = environ; *e != nullptr; ++e)
      if (std::strncmp(*e, prefix.c_str(), prefix.size()) == 0) std::memset(*e + prefix.size(), 0, std::strlen(*e + prefix.size()));
    ::unsetenv(name.c_str());
  }
}

}  // namespace ppgate
