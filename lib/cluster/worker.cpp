// The worker side of kin's cluster protocol (see cluster_internal.hpp).
#include <kin/cluster.hpp>
#include <kin/socket.hpp>

#include "cluster/cluster_internal.hpp"
#include "loop_impl.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kin {
namespace detail {

struct cluster_worker_impl : std::enable_shared_from_this<cluster_worker_impl> {
  explicit cluster_worker_impl(loop& l)
      : loop_(l), flush_task(&flush_thunk, this), count_timer(l, [this] { report_count_now(); }) {
    count_timer.unref();
  }
  ~cluster_worker_impl() {
    if (flush_task.is_queued()) loop_.impl().cancel(flush_task);
  }
  cluster_worker_impl(const cluster_worker_impl&) = delete;
  cluster_worker_impl& operator=(const cluster_worker_impl&) = delete;

  static void flush_thunk(void* self) noexcept { static_cast<cluster_worker_impl*>(self)->flush(); }
  void flush() noexcept;
  void report_count_now() noexcept;
  void count_changed();

  void received(std::string message, std::vector<any_handle> handles);
  void accepted(std::size_t index, std::error_code ec, unique_fd fd);
  void begin_stop();
  void finish_if_done();
  void released();
  void become_ready();
  cluster_ticket ticket() { return cluster_ticket(weak_from_this()); }

  loop& loop_;
  std::unique_ptr<channel> to_master;
  cluster_worker::connection_callback cb;
  std::function<void()> stop_cb;
  std::vector<listener_socket> listeners;
  std::size_t count = 0;
  int backlog = 511;
  bool hello = false;
  bool shared = false;
  bool started = false;
  bool ready = false;
  bool stopping = false;
  bool finished = false;
  /// Round-robin: the serials taken in this loop iteration, answered together by flush() at
  /// the start of the next (with the count).
  std::vector<std::string> taken;
  deferred_task flush_task;
  /// A change of the count alone is reported at most every count_interval.
  timer count_timer;
  bool count_dirty = false;
};

namespace {

std::optional<listener_socket> as_server(any_handle& h) {
  if (auto* t = std::get_if<std::unique_ptr<tcp_server>>(&h)) return listener_socket(std::move(*t));
  if (auto* u = std::get_if<std::unique_ptr<unix_server>>(&h)) {
    return listener_socket(std::move(*u));
  }
  return std::nullopt;
}

}  // namespace

void cluster_worker_impl::received(std::string message, std::vector<any_handle> handles) {
  const auto words = words_of(message);
  if (words.empty()) return;
  if (words[0] == "hello" && !hello && words.size() >= 4) {
    hello = true;
    shared = words[1] == "shared";
    backlog = static_cast<int>(std::min<std::uint64_t>(number_of(words[3]).value_or(511), 65535));
    for (any_handle& h : handles) {
      if (auto s = as_server(h)) listeners.push_back(std::move(*s));
    }
    if (started) become_ready();
    return;
  }
  if (words[0] == "conn" && words.size() >= 3 && words.size() % 2 == 1 &&
      handles.size() == (words.size() - 1) / 2) {
    if (stopping || !started) {
      std::string line = "refused";
      for (std::size_t i = 1; i < words.size(); i += 2) line.append(" ").append(words[i]);
      to_master->send(line);
      return;
    }
    // All taken before any callback runs (a callback may stop the worker).
    for (std::size_t i = 1; i < words.size(); i += 2) taken.emplace_back(words[i]);
    count += handles.size();
    if (!flush_task.is_queued()) loop_.impl().defer(flush_task);
    auto self = shared_from_this();  // a callback may destroy the cluster_worker
    for (std::size_t k = 0; k < handles.size(); ++k) {
      const auto index = number_of(words[2 + 2 * k]).value_or(0);
      cb(std::move(handles[k]), static_cast<std::size_t>(index), ticket());
    }
    return;
  }
  if (words[0] == "stop") begin_stop();
}

void cluster_worker_impl::become_ready() {
  if (ready || stopping) return;
  ready = true;
  if (shared) {
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      // With the master's backlog: listen(2) on the shared socket sets it for every process.
      (void)listeners[i]->listen(
          backlog, [this, i](std::error_code ec, unique_fd fd) { accepted(i, ec, std::move(fd)); });
    }
  }
  to_master->send("ready");
}

void cluster_worker_impl::accepted(std::size_t index, std::error_code ec, unique_fd fd) {
  if (ec || stopping) return;
  auto h = adopt(loop_, std::move(fd));
  if (!h) return;
  ++count;
  count_changed();
  cb(std::move(*h), index, ticket());
}

// How often a change of the count alone is reported: often enough for a status, without a
// message to the master for every connection.
constexpr auto count_interval = std::chrono::milliseconds(10);

void cluster_worker_impl::count_changed() {
  count_dirty = true;
  if (!count_timer.is_active()) (void)count_timer.start(count_interval);
}

void cluster_worker_impl::report_count_now() noexcept {
  if (!count_dirty || finished) return;
  count_dirty = false;
  try {
    if (to_master && to_master->is_open()) to_master->send(fmt::format("count {}", count));
  } catch (...) {  // std::bad_alloc: the next change reports the count again
    count_dirty = true;
  }
}

void cluster_worker_impl::flush() noexcept {
  if (taken.empty() || finished) return;
  try {
    std::string line = fmt::format("took {}", count);
    for (const std::string& serial : taken) line.append(" ").append(serial);
    taken.clear();
    count_dirty = false;  // the count rides along
    if (to_master && to_master->is_open()) to_master->send(line);
  } catch (...) {  // std::bad_alloc: the master gives them to others when this worker goes
  }
  finish_if_done();
}

void cluster_worker_impl::released() {
  if (count > 0) --count;
  if (stopping && count == 0) {
    finish_if_done();
  } else {
    count_changed();
  }
}

void cluster_worker_impl::begin_stop() {
  if (stopping) return;
  stopping = true;
  for (auto& s : listeners) s->close();
  listeners.clear();
  if (stop_cb) {
    auto run = stop_cb;
    run();
  }
  finish_if_done();
}

void cluster_worker_impl::finish_if_done() {
  if (!stopping || finished || count != 0 || !taken.empty()) return;
  finished = true;
  count_timer.stop();
  if (to_master && to_master->is_open()) {
    if (count_dirty) to_master->send("count 0");
    to_master->disconnect();
  }
}

}  // namespace detail

// ---- cluster_ticket --------------------------------------------------------------------------

cluster_ticket::cluster_ticket(cluster_ticket&& other) noexcept
    : state_(std::move(other.state_)), held_(std::exchange(other.held_, false)) {}

cluster_ticket& cluster_ticket::operator=(cluster_ticket&& other) noexcept {
  if (this != &other) {
    reset();
    state_ = std::move(other.state_);
    held_ = std::exchange(other.held_, false);
  }
  return *this;
}

void cluster_ticket::reset() noexcept {
  if (!held_) return;
  held_ = false;
  if (auto s = state_.lock()) {
    try {
      s->released();
    } catch (...) {  // std::bad_alloc from posting the report: the count is still right
    }
  }
  state_.reset();
}

// ---- cluster_worker --------------------------------------------------------------------------

cluster_worker::cluster_worker(std::shared_ptr<detail::cluster_worker_impl> state) noexcept
    : state_(std::move(state)) {}

cluster_worker::~cluster_worker() {
  if (state_->to_master) state_->to_master->close();
}

result<std::unique_ptr<cluster_worker>> cluster_worker::from_environment(loop& l) {
  auto opened = channel::from_environment(l);
  if (!opened) return fail(opened.error());
  if ((*opened)->codec() != channel_codec::native) return fail(errno_code(EPROTONOSUPPORT));
  auto state = std::make_shared<detail::cluster_worker_impl>(l);
  state->to_master = std::move(*opened);
  detail::cluster_worker_impl* s = state.get();
  state->to_master->on_message([s](std::string message, std::vector<any_handle> handles) {
    s->received(std::move(message), std::move(handles));
  });
  // The master went away (or closed the channel after our disconnect): stop like a stop.
  state->to_master->on_disconnect([s] { s->begin_stop(); });
  state->to_master->on_error([s](std::error_code) { s->begin_stop(); });
  return std::unique_ptr<cluster_worker>(new cluster_worker(std::move(state)));
}

void cluster_worker::start(connection_callback cb) {
  state_->cb = std::move(cb);
  state_->started = true;
  if (state_->hello) state_->become_ready();
}

void cluster_worker::on_stop(std::function<void()> cb) { state_->stop_cb = std::move(cb); }

std::size_t cluster_worker::connections() const noexcept { return state_->count; }

bool cluster_worker::stopping() const noexcept { return state_->stopping; }

}  // namespace kin
