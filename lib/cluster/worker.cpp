// The worker side of kin's cluster protocol (see cluster_internal.hpp).
#include <kin/cluster.hpp>
#include <kin/socket.hpp>

#include "cluster/cluster_internal.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kin {
namespace detail {

struct cluster_worker_impl : std::enable_shared_from_this<cluster_worker_impl> {
  explicit cluster_worker_impl(loop& l) : loop_(l) {}

  void received(std::string message, std::vector<any_handle> handles);
  void accepted(std::size_t index, std::error_code ec, unique_fd fd);
  void begin_stop();
  void finish_if_done();
  void released();
  void report_count();
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
  bool report_posted = false;
  bool finished = false;
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
  if (words[0] == "conn" && words.size() == 3 && handles.size() == 1) {
    if (stopping || !started) {
      to_master->send(fmt::format("refused {}", words[1]));
      return;
    }
    const auto index = number_of(words[2]).value_or(0);
    ++count;
    to_master->send(fmt::format("took {} {}", words[1], count));
    cb(std::move(handles.front()), static_cast<std::size_t>(index), ticket());
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
  report_count();
  cb(std::move(*h), index, ticket());
}

void cluster_worker_impl::report_count() {
  if (report_posted || finished) return;
  report_posted = true;
  // One report per loop iteration, however many connections opened or closed in it.
  loop_.post([weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self) return;
    self->report_posted = false;
    if (self->to_master && self->to_master->is_open()) {
      self->to_master->send(fmt::format("count {}", self->count));
    }
    self->finish_if_done();
  });
}

void cluster_worker_impl::released() {
  if (count > 0) --count;
  report_count();
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
  if (!stopping || finished || count != 0 || report_posted) return;
  finished = true;
  if (to_master) to_master->disconnect();
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
