#include "peer_server.hpp"

#include "acceptor.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "shared_memory.hpp"
#include "tagged_jobs.hpp"

#include <boost/asio/this_coro.hpp>

#include <charconv>
#include <utility>

namespace ppgate {

namespace {

// A framed peer `result` message: "<tag> <state> <run seconds>\n<outcome members>".
void append_peer_result(std::string& frames, std::int64_t tag, std::string_view state, double run_seconds,
                        std::string_view outcome) {
  std::string body = std::to_string(tag);
  body += ' ';
  body += state;
  body += ' ';
  append_json_number(body, run_seconds);
  body += '\n';
  body += outcome;
  peer::append_message(frames, peer::msg::result, body);
}

// What a dialer is told of the jobs it sent: peer `result` frames, a refused batch included (each
// of its jobs ends `refused`, which the dialer takes as failed, with the reason). Its jobs run on this node's own workers only.
class peer_result_encoding final : public tagged_jobs::encoding {
 public:
  bool local_only() const override { return true; }
  void append_result(std::string& results, std::int64_t tag, const job& j) const override {
    const std::string_view outcome = j.outcome;
    if (j.state == job_state::done && outcome.starts_with(shared_memory::result_in_file)) {
      // A big result the worker left in a file: its bytes go as the attachments of a
      // result_attached frame, so the dialer gets them without base64.
      std::string attachments, body;
      try {
        const auto start = outcome.find('{'), end = outcome.find('}');  // (its parts hold no braces)
        body = std::to_string(tag) + " done ";
        append_json_number(body, j.run_seconds);
        body += '\n';
        body += shared_memory::attach_result(outcome.substr(start, end - start + 1), attachments);
        body += outcome.substr(end + 1);
      } catch (const shared_memory::error& e) {
        append_peer_result(results, tag, "failed", j.run_seconds,
                           error_outcome("SharedMemoryError", std::string("the result was lost: ") + e.what()));
        return;
      }
      std::string message = shared_memory::binary_message_length(body.size());
      message += body;
      message += attachments;
      peer::append_message(results, peer::msg::result_attached, message);
      return;
    }
    append_peer_result(results, tag, to_string(j.state), j.run_seconds, j.outcome);
  }
  std::string refuse_batch(std::string& results, const std::vector<std::int64_t>& tags,
                           std::string_view why) const override {
    for (const auto tag : tags)
      append_peer_result(results, tag, peer::refused_result, 0, error_outcome("SubmitError", why));
    return {};
  }
  std::string results_message(std::string&& results) const override { return std::move(results); }
};

const peer_result_encoding peer_results;

}  // namespace

// One accepted peer: the acceptor's side of the handshake, then its jobs.
class peer_server::connection : public peer_channel {
 public:
  connection(std::unique_ptr<peer_stream> s, peer_server& server)
      : peer_channel(std::move(s), server.settings_), server_(server) {}

  net::awaitable<void> serve() {
    // Counted as handshaking until authenticated or gone, TLS handshake included.
    struct handshake_count {
      std::size_t& n;
      bool counted = true;
      explicit handshake_count(std::size_t& c) : n(c) { ++n; }
      void done() { if (std::exchange(counted, false)) --n; }
      ~handshake_count() { done(); }
    } handshaking(server_.handshaking_);
    // The whole handshake, TLS included, has one deadline.
    auto self = shared_from_this();
    net::steady_timer deadline(co_await net::this_coro::executor, settings_.handshake_timeout);
    deadline.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->close();
    });
    try {
      peer_name_ = stream_->socket().remote_endpoint().address().to_string() + ":" +
                   std::to_string(stream_->socket().remote_endpoint().port());
    } catch (const std::exception&) {
    }
    auto [tls_ec, tls_why] = co_await stream_->handshake(/*as_server=*/true);
    if (tls_ec) {
      log::warn("peer ", peer_name_, ": ", tls_why);
      close();
      co_return;
    }
    const bool authenticated = !closed() && co_await authenticate();
    handshaking.done();
    deadline.cancel();
    if (!authenticated) {
      close();
      co_return;
    }
    log::info("peer ", peer_name_, " connected");
    jobs_ = std::make_shared<tagged_jobs>(
        server_.sched_, [this] { send_frames(jobs_->take_output()); }, peer_results);
    // For the attachments of run_attached batches; removed with the link.
    files_prefix_ = shared_memory::new_session_prefix();
    jobs_->use_files(files_prefix_, false, tagged_jobs::results_in_files::when_asked);
    co_await run();
  }

  void capacity_changed(std::size_t slots) {
    if (jobs_) send(peer::msg::capacity, std::to_string(slots));  // only once authenticated
  }

 private:
  net::awaitable<bool> refuse(const std::string& why) {
    log::warn("peer ", peer_name_, " refused: ", why);
    send(peer::msg::refused, why);
    co_await flush();
    co_return false;
  }

  net::awaitable<bool> authenticate() {
    std::string storage;
    auto hello = co_await receive(storage);
    if (!hello || hello->type != peer::msg::hello) co_return co_await refuse("expected a hello");
    const auto h = peer::parse_hello(hello->payload);
    if (!h || h->magic != peer::magic) co_return co_await refuse("not a ppgate peer");
    if (h->version != peer::protocol_version)
      co_return co_await refuse("protocol version mismatch: this node speaks version " +
                                std::to_string(peer::protocol_version) + ", the peer speaks version " +
                                std::to_string(h->version));
    if (h->nonce.size() != 64) co_return co_await refuse("a malformed hello");
    const std::string& nonce_d = h->nonce;
    if (!h->name.empty()) peer_name_ = h->name;
    const std::string nonce_a = peer::make_nonce();
    send(peer::msg::challenge, std::to_string(peer::protocol_version) + " " + nonce_a + " " +
                                   peer::proof_of(settings_.secret, "acceptor", nonce_d, nonce_a));
    if (!co_await flush()) co_return false;
    auto proof = co_await receive(storage);
    if (proof && proof->type == peer::msg::refused) {
      // The dialer found that our proof does not match its secret.
      log::warn("peer ", peer_name_, " refused the handshake: ", proof->payload,
                " (authentication failed: the secrets differ)");
      co_return false;
    }
    if (!proof || proof->type != peer::msg::proof) co_return false;
    const std::string expected = peer::proof_of(settings_.secret, "dialer", nonce_a, nonce_d);
    if (!peer::equal_in_constant_time(proof->payload, expected))
      co_return co_await refuse("authentication failed: the peer does not hold this cluster's secret");
    authenticate_frames(nonce_d, nonce_a, /*this_is_dialer=*/false);
    send(peer::msg::welcome, std::to_string(server_.pool_.size()) + " " + server_.pool_.python_version() +
                                  " " + settings_.name);
    co_return co_await flush();
  }

  void on_message(const peer::message& m) override {
    switch (m.type) {
      case peer::msg::run: {
        std::string batch(m.payload);
        jobs_->submit_batch(batch);
        break;
      }
      case peer::msg::run_attached: {
        std::shared_ptr<const shared_memory::node_file> file;
        std::string batch;
        try {
          const auto parts = shared_memory::split_binary_message(m.payload);
          batch = std::string(parts.json);
          if (!parts.attachments.empty())
            file = shared_memory::write_node_file(files_prefix_ + "n" + std::to_string(++files_written_),
                                                  parts.attachments);
        } catch (const shared_memory::error& e) {
          // Each job it holds is answered (its tags are found however broken the batch is).
          std::string whole = batch.empty() ? std::string(m.payload) : batch;
          jobs_->reject(whole, e.what());
          break;
        }
        jobs_->submit_batch(batch, std::move(file));
        break;
      }
      case peer::msg::cancel: {
        std::int64_t tag = 0;
        std::from_chars(m.payload.data(), m.payload.data() + m.payload.size(), tag);
        jobs_->cancel(tag);
        break;
      }
      case peer::msg::ping: send(peer::msg::pong, {}); break;
      case peer::msg::pong: break;
      default: log::warn("peer ", peer_name_, " sent an unexpected message"); break;
    }
  }

  void on_closed() override {
    if (jobs_) {
      if (jobs_->open_jobs() > 0)
        log::info("peer ", peer_name_, " left; cancelling its ", jobs_->open_jobs(), " unfinished jobs");
      jobs_->cancel_all();
    }
    log::info("peer ", peer_name_, " disconnected");
  }

  peer_server& server_;
  std::shared_ptr<tagged_jobs> jobs_;
  std::string files_prefix_;  // of this link's files in /dev/shm
  std::uint64_t files_written_ = 0;
};

peer_server::peer_server(net::any_io_executor ex, scheduler& sched, local_pool& pool,
                         const peer_settings& settings)
    : ex_(ex), sched_(sched), pool_(pool), settings_(settings), acceptor_(ex) {
  if (settings_.tls.enabled()) tls_ = make_tls_context(settings_.tls, /*server=*/true);
}

peer_server::~peer_server() { stop(); }

void peer_server::listen(const net::ip::tcp::endpoint& endpoint) {
  port_ = bind_and_listen(acceptor_, endpoint);
  net::co_spawn(ex_, accept_loop(), log::on_failure("peer listener"));
}

net::awaitable<void> peer_server::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow_awaitable);
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      net::steady_timer pause(ex_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_nothrow_awaitable);
      continue;
    }
    boost::system::error_code ignored;
    if (handshaking_ >= max_handshaking) {
      log::debug("peer port: ", handshaking_, " connections are in their handshake; closing a new one");
      socket.close(ignored);
      continue;
    }
    socket.set_option(net::ip::tcp::no_delay(true), ignored);
    auto stream = tls_ ? std::make_unique<peer_stream>(std::move(socket), *tls_)
                       : std::make_unique<peer_stream>(std::move(socket));
    auto c = std::make_shared<connection>(std::move(stream), *this);
    std::erase_if(connections_, [](const auto& w) { return w.expired(); });
    connections_.push_back(c);
    net::co_spawn(ex_, [c]() { return c->serve(); }, log::on_failure("peer connection"));
  }
}

void peer_server::capacity_changed() {
  for (const auto& w : connections_)
    if (auto c = w.lock(); c && !c->closed()) c->capacity_changed(pool_.size());
}

void peer_server::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  for (const auto& w : connections_)
    if (auto c = w.lock()) c->close();
}

}  // namespace ppgate
