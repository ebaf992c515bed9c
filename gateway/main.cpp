// ppgate: the node executable. Parses the command line and runs a node_server until it stops.
#include "event_loop.hpp"
#include "job.hpp"
#include "log.hpp"
#include "node_server.hpp"
#include "options.hpp"
#include "worker_memory.hpp"

#include <boost/asio/io_context.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>

int main(int argc, char** argv) {
  using namespace ppgate;
  parsed_command cmd;
  try {
    cmd = parse_command_line(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "ppgate: %s\n", e.what());
    return 2;
  }
  if (cmd.what == command::help) {
    std::cout << help_text();
    return 0;
  }
  if (cmd.what == command::version) {
    std::cout << "ppgate " << PPGATE_VERSION << "\n";
    return 0;
  }

  forget_secret_variables(cmd.serve.secret_variables);  // before any child process starts
  std::signal(SIGPIPE, SIG_IGN);  // a closed peer is an error code on write, not a death
  log::parse_level(cmd.serve.log_level, log::threshold());
  if (cmd.serve.log_format == "json") log::output_format() = log::format::json;
  for (const auto& warning : cmd.serve.warnings) log::warn(warning);
  try {
    worker_options workers;
    workers.command.script = locate_worker_script(cmd.serve.worker_dir);
    // Refuse an interpreter that cannot run the worker now, with its reason, rather than
    // restarting workers that die forever; unless the caller vouches for it (the probe is a
    // whole interpreter start on the way to the first result).
    const python_info python = cmd.serve.python_version.empty()
                                   ? probe_python(cmd.serve.python, workers.command.script)
                                   : python_info{cmd.serve.python, cmd.serve.python_version};
    workers.command.python = python.executable;
    workers.python_version = python.version;
    workers.max_jobs_per_process = cmd.serve.max_jobs_per_worker;
    log::info("workers run Python ", python.version, " (", python.executable, ")");
    std::unique_ptr<worker_cgroups> cgroups;
    if (const auto limit = cmd.serve.max_worker_memory; limit != 0) {
      workers.max_memory = limit;
      workers.command.extra_args = {"--max-memory", std::to_string(limit)};
      std::string why_not;
      cgroups = worker_cgroups::prepare(why_not);
      if (cgroups) {
        workers.cgroups = cgroups.get();
        log::info("--max-worker-memory: each worker runs in a cgroup under ", cgroups->dir().string(),
                  " with memory.max ", limit);
      } else {
        workers.command.extra_args.push_back("--memory-rlimit");
        log::info("--max-worker-memory: workers cap their address space (RLIMIT_AS), as no cgroup can be "
                  "made: ", why_not);
      }
    }
    net::io_context io(1);
    node_server server(io, cmd.serve, std::move(workers));
    server.start();
    run_event_loop(io, [&server] { return server.should_poll(); });
    server.stop();
  } catch (const usage_error& e) {
    std::fprintf(stderr, "ppgate: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ppgate: %s\n", e.what());
    return 1;
  }
  return 0;
}
