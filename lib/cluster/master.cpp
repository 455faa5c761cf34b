// The cluster master: listeners, workers, round-robin hand-over, respawn with backoff, the
// crash-loop guard, reload and close. The Node side of the protocol is in master_node.cpp.
#include "cluster/master_state.hpp"

#include "loop_impl.hpp"
#include "posix/sys.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <iterator>
#include <utility>

#include <fcntl.h>

namespace kin {
namespace detail {

using namespace std::chrono_literals;

namespace {

const char* state_name(cluster_worker_state s) {
  switch (s) {
    case cluster_worker_state::starting:
      return "starting";
    case cluster_worker_state::ready:
      return "ready";
    case cluster_worker_state::stopping:
      return "stopping";
  }
  return "?";
}

std::string exit_text(std::error_code ec, int status, int signal) {
  if (ec) return fmt::format("ended ({})", ec.message());
  if (signal > 0) return fmt::format("was killed by signal {} ({})", signal, ::strsignal(signal));
  return fmt::format("exited with status {}", status);
}

std::string listener_name(std::string_view text) {
  std::string name(text);
  std::replace(name.begin(), name.end(), ' ', '_');
  return name.empty() ? std::string("-") : name;
}

}  // namespace

cluster_master_impl::cluster_master_impl(loop& l, cluster_options options)
    : loop_(l), o(std::move(options)), dispatch_task(&dispatch_thunk, this) {}

cluster_master_impl::~cluster_master_impl() {
  if (dispatch_task.is_queued()) loop_.impl().cancel(dispatch_task);
  for (auto& [id, w] : workers) {
    if (!w->exited) (void)w->child->kill(SIGKILL);
  }
}

void cluster_master_impl::emit(cluster_event::kind what, int worker_id, std::string text) {
  if (!event_cb) return;
  cluster_event e{what, worker_id, std::move(text)};
  auto cb = event_cb;  // the callback may replace itself
  cb(e);
}

// ---- start -----------------------------------------------------------------------------------

result<void> cluster_master_impl::start() {
  if (started) return fail(errno_code(EALREADY));
  const bool activation = o.kind == cluster_worker_kind::activation;
  if (o.program.empty() || o.workers < 1 || (activation && o.mode == cluster_mode::round_robin) ||
      (o.kind != cluster_worker_kind::node && o.listen.empty() && o.listeners.empty())) {
    return fail(errno_code(EINVAL));
  }
  // Addresses first: a bad one fails before anything is bound.
  std::vector<socket_address> addresses;
  for (const std::string& text : o.listen) {
    auto a = parse_listen_address(text);
    if (!a) return fail(a.error());
    addresses.push_back(*a);
  }
  for (std::size_t i = 0; i < addresses.size(); ++i) {
    auto s = open_listener(loop_, addresses[i]);
    if (!s) return stop_start(s.error());
    add_listener(std::move(*s), o.listen[i], {});
  }
  for (cluster_listener& given : o.listeners) {
    auto s = adopt_listener(loop_, std::move(given.fd));
    if (!s) return stop_start(s.error());
    add_listener(std::move(*s), given.name, {});
  }
  o.listeners.clear();
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    if (auto r = listen_on(i); !r) return stop_start(r.error());
  }
  started = true;
  slot_backoff.assign(static_cast<std::size_t>(o.workers), o.backoff_initial);
  for (int slot = 0; slot < o.workers; ++slot) {
    if (auto r = start_worker(static_cast<unsigned>(slot), serving_generation); !r) {
      emit(cluster_event::kind::error, 0, r.error().message());
      return stop_start(r.error().code);
    }
  }
  return {};
}

result<void> cluster_master_impl::stop_start(std::error_code ec) {
  for (auto& [id, w] : workers) (void)w->child->kill(SIGKILL);
  workers.clear();
  for (auto& l : listeners) l.srv->close();
  listeners.clear();
  started = false;
  return fail(ec);
}

std::size_t cluster_master_impl::add_listener(listener_socket srv, std::string name,
                                              std::string node_key) {
  listener_rec l{std::move(srv)};
  l.address = l.srv->local_address().value_or(socket_address());
  l.name = name.empty() ? l.address.to_string() : std::move(name);
  l.node_key = std::move(node_key);
  listeners.push_back(std::move(l));
  return listeners.size() - 1;
}

// Puts the socket in the listening state. Round-robin: the master accepts on it. Shared: it
// only holds it (the workers accept); for activation workers it is made blocking, as a
// socket-activation manager passes it.
result<void> cluster_master_impl::listen_on(std::size_t index) {
  listener_rec& l = listeners[index];
  auto r = l.srv->listen(o.backlog, [this, index](std::error_code ec, unique_fd fd) {
    accepted(index, ec, std::move(fd));
  });
  if (!r) return r;
  if (o.mode == cluster_mode::shared) {
    l.srv->stop_accepting();
    if (o.kind == cluster_worker_kind::activation) {
      if (auto b = sys::set_nonblocking(l.srv->fd(), false); !b) return b;
    }
  } else if (paused) {
    l.srv->stop_accepting();
  }
  emit(cluster_event::kind::listening, 0, l.address.to_string());
  return {};
}

// ---- workers ---------------------------------------------------------------------------------

result<void, spawn_error> cluster_master_impl::start_worker(unsigned slot, unsigned generation) {
  const int id = next_id;
  auto w = std::make_unique<worker_rec>(loop_);
  w->id = id;
  w->slot = slot;
  w->generation = generation;
  w->started_at = loop_.now();
  w->connections = o.kind == cluster_worker_kind::kin ? 0 : -1;

  spawn_options so = o.spawn;
  if (o.kind == cluster_worker_kind::activation) {
    so.file = o.program;
    so.args.clear();
    so.args.push_back(o.program);
    so.args.insert(so.args.end(), o.args.begin(), o.args.end());
    while (so.stdio.size() < 3) so.stdio.push_back(stdio::inherit());
    so.stdio.erase(so.stdio.begin() + 3, so.stdio.end());
    std::string names;
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      so.stdio.push_back(stdio::fd(listeners[i].srv->fd()));
      if (i != 0) names += ':';
      // A name in LISTEN_FDNAMES cannot hold ':' (nor control characters).
      for (const char c : listeners[i].name) {
        names += c == ':' || static_cast<unsigned char>(c) < 0x20 ? '_' : c;
      }
    }
    so.env.emplace_back("LISTEN_FDS", std::to_string(listeners.size()));
    so.env.emplace_back("LISTEN_FDNAMES", names);
    so.pid_variable = "LISTEN_PID";
    auto child = spawn(loop_, so);
    if (!child) return fail(child.error());
    w->child = std::move(*child);
  } else {
    fork_options fo;
    fo.spawn = so;
    if (o.kind == cluster_worker_kind::node) {
      fo.channel.codec = channel_codec::node;
      fo.channel.node_raw_handles = true;
      fo.spawn.env.emplace_back("NODE_UNIQUE_ID", std::to_string(id));
    }
    auto forked = kin::fork(loop_, o.program, o.args, fo);
    if (!forked) return fail(forked.error());
    w->child = std::move(forked->child);
    w->chan = std::move(forked->channel);
  }
  ++next_id;
  w->pid = w->child->pid();
  worker_rec& me = *w;
  workers.emplace(id, std::move(w));
  me.child->on_exit(
      [this, id](std::error_code ec, int status, int signal) { exited(id, ec, status, signal); });
  if (me.chan) {
    me.chan->on_disconnect([this, id] { channel_closed(id); });
    me.chan->on_error([this, id](std::error_code ec) {
      emit(cluster_event::kind::error, id,
           fmt::format("channel to worker {}: {}", id, ec.message()));
    });
    if (o.kind == cluster_worker_kind::node) {
      me.chan->on_internal_message(
          [this, id](std::string m, std::vector<any_handle>) { node_message(id, m); });
      me.chan->on_message([](std::string, std::vector<any_handle>) {});
    } else {
      me.chan->on_message(
          [this, id](std::string m, std::vector<any_handle>) { kin_message(id, m); });
      send_hello(me);
    }
  }
  emit(cluster_event::kind::worker_started, id,
       fmt::format("worker {} (pid {}, generation {}) started", id, me.pid, generation));
  if (o.kind == cluster_worker_kind::activation) {
    // Nothing to wait for: the listening sockets queue connections until it accepts.
    loop_.post([weak = weak_from_this(), id] {
      auto self = weak.lock();
      if (!self) return;
      if (worker_rec* started_one = self->find(id)) self->became_ready(*started_one);
    });
  }
  return {};
}

void cluster_master_impl::send_hello(worker_rec& w) {
  const bool shared = o.mode == cluster_mode::shared;
  std::string line = fmt::format("hello {} {} {}", shared ? "shared" : "round-robin",
                                 shared ? listeners.size() : 0, o.backlog);
  std::vector<int> fds;
  for (const listener_rec& l : listeners) {
    line += ' ';
    line += listener_name(l.name);
    if (shared) fds.push_back(l.srv->fd());
  }
  w.chan->send_keeping(line, fds);
}

worker_rec* cluster_master_impl::find(int id) {
  auto it = workers.find(id);
  if (it != workers.end()) return it->second.get();
  auto gone = departed.find(id);
  return gone == departed.end() ? nullptr : gone->second.get();
}

void cluster_master_impl::kin_message(int id, std::string_view message) {
  worker_rec* w = find(id);
  if (w == nullptr) return;
  const auto words = words_of(message);
  if (words.empty()) return;
  if (words[0] == "ready") {
    became_ready(*w);
  } else if (words[0] == "took" && words.size() >= 3) {
    const auto count = number_of(words[1]);
    if (!count) return;
    for (std::size_t i = 2; i < words.size(); ++i) {
      const auto serial = number_of(words[i]);
      if (serial && w->in_flight.erase(*serial) != 0) ++handed_total;
    }
    w->connections = static_cast<long>(*count);
    dispatch();
    check_closed();
  } else if (words[0] == "refused") {
    // Given back in their order, ahead of the connections that came later.
    for (std::size_t i = words.size(); i-- > 1;) {
      if (auto serial = number_of(words[i])) give_back(*w, *serial);
    }
    dispatch();
  } else if (words[0] == "count" && words.size() == 2) {
    if (auto count = number_of(words[1])) w->connections = static_cast<long>(*count);
    check_closed();
  }
}

void cluster_master_impl::became_ready(worker_rec& w) {
  if (w.state != cluster_worker_state::starting) return;
  w.state = cluster_worker_state::ready;
  emit(cluster_event::kind::worker_ready, w.id,
       fmt::format("worker {} (pid {}) is ready", w.id, w.pid));
  if (closing) {
    tell_stop(w);
    return;
  }
  dispatch();
  check_reload();
}

// Connections handed to `w` and not yet taken go back to the front of the queue, in order.
void cluster_master_impl::requeue(worker_rec& w) {
  for (auto it = w.in_flight.rbegin(); it != w.in_flight.rend(); ++it) {
    queue.push_front(std::move(it->second));
  }
  w.in_flight.clear();
}

void cluster_master_impl::give_back(worker_rec& w, std::uint64_t serial) {
  auto it = w.in_flight.find(serial);
  if (it == w.in_flight.end()) return;
  queue.push_front(std::move(it->second));
  w.in_flight.erase(it);
}

void cluster_master_impl::forget_departed(int id) {
  auto it = departed.find(id);
  if (it == departed.end()) return;
  std::unique_ptr<worker_rec> w = std::move(it->second);
  departed.erase(it);
  requeue(*w);
  w.reset();  // from its channel's or its timer's callback: both allow it
  dispatch();
  check_closed();
}

void cluster_master_impl::channel_closed(int id) {
  if (departed.count(id) != 0) {
    forget_departed(id);
    return;
  }
  worker_rec* w = find(id);
  if (w == nullptr) return;
  requeue(*w);
  w->node_listeners.clear();
  if (w->state != cluster_worker_state::stopping) {
    // It closed its end unasked: it is on its way out. Its exit decides about a respawn.
    w->state = cluster_worker_state::stopping;
    start_grace(*w);
  }
  dispatch();
}

void cluster_master_impl::exited(int id, std::error_code ec, int status, int signal) {
  auto it = workers.find(id);
  if (it == workers.end()) return;
  std::unique_ptr<worker_rec> w = std::move(it->second);
  workers.erase(it);
  w->exited = true;
  const bool asked = w->told_stop;
  const bool left = w->exited_after_disconnect;
  const std::string what =
      fmt::format("worker {} (pid {}) {}", w->id, w->pid, exit_text(ec, status, signal));
  const unsigned slot = w->slot;
  const unsigned generation = w->generation;
  const auto lived = loop_.now() - w->started_at;
  if (w->chan && w->chan->is_open() && !w->in_flight.empty()) {
    // Its last messages (a took for what it was handed) may still be unread: the channel is
    // read to its end before what is still in flight goes to the others (or after 5 s, if
    // something else holds the channel's other end; 1 s was too short for a descendant's
    // took on a loaded machine, and the connection then went to two workers).
    worker_rec& d = *w;
    departed.emplace(id, std::move(w));
    d.grace.set_callback([this, id] { forget_departed(id); });
    (void)d.grace.start(std::chrono::seconds(5));
  } else {
    requeue(*w);
    w.reset();
  }
  dispatch();

  if (asked || closing) {
    emit(cluster_event::kind::worker_retired, id, what);
  } else if (left && generation == serving_generation && !crash) {
    // A Node worker that disconnected itself (cluster.worker.disconnect()): replaced at once,
    // not a death.
    emit(cluster_event::kind::worker_retired, id, what);
    schedule_respawn(slot, std::chrono::milliseconds(0));
  } else if (reload && generation == reload->generation) {
    emit(cluster_event::kind::worker_exited, id, what);
    fail_reload(
        make_error_code(std::errc::no_child_process),
        fmt::format("new worker {} {} before it was ready", id, exit_text(ec, status, signal)));
  } else if (generation == serving_generation) {
    unasked_death(id, slot, what, lived);
  } else {
    emit(cluster_event::kind::worker_exited, id, what);
  }
  check_closed();
}

void cluster_master_impl::unasked_death(int id, unsigned slot, const std::string& what,
                                        std::chrono::nanoseconds lived) {
  const auto now = loop_.now();
  deaths.push_back(now);
  while (!deaths.empty() && now - deaths.front() > o.crash_window) deaths.pop_front();
  if (crash || static_cast<int>(deaths.size()) > o.crash_limit) {
    if (!crash) {
      crash = true;
      for (auto& t : respawn_timers) {
        if (t) t->stop();
      }
      emit(cluster_event::kind::worker_exited, id, what);
      emit(cluster_event::kind::crash_loop, id,
           fmt::format("crash loop: {} workers died within {} ms; not respawning", deaths.size(),
                       o.crash_window.count()));
    } else {
      emit(cluster_event::kind::worker_exited, id, what);
    }
    return;
  }
  auto& delay = slot_backoff[slot];
  if (lived > o.backoff_max) delay = o.backoff_initial;
  const auto wait = delay;
  delay = std::min(delay * 2, o.backoff_max);
  emit(cluster_event::kind::worker_exited, id, what);
  emit(cluster_event::kind::respawn_scheduled, id,
       fmt::format("respawn in {} ms", std::chrono::milliseconds(wait).count()));
  schedule_respawn(slot, wait);
}

void cluster_master_impl::schedule_respawn(unsigned slot, std::chrono::milliseconds delay) {
  if (respawn_timers.size() <= slot) respawn_timers.resize(slot + 1);
  if (!respawn_timers[slot]) respawn_timers[slot] = std::make_unique<timer>(loop_);
  respawn_timers[slot]->set_callback([this, slot] { respawn(slot); });
  (void)respawn_timers[slot]->start(delay);
}

void cluster_master_impl::respawn(unsigned slot) {
  if (closing || crash) return;
  if (auto r = start_worker(slot, serving_generation); !r) {
    emit(cluster_event::kind::error, 0,
         fmt::format("cannot respawn a worker: {}", r.error().message()));
    // Counted as a death: a program that cannot start is a crash loop too.
    unasked_death(0, slot, "a respawned worker could not start", {});
  }
}

// ---- round-robin -----------------------------------------------------------------------------

void cluster_master_impl::accepted(std::size_t index, std::error_code ec, unique_fd fd) {
  if (ec) {
    emit(cluster_event::kind::error, 0,
         fmt::format("accepting on {}: {}", listeners[index].address.to_string(), ec.message()));
    return;
  }
  queue.push_back({std::move(fd), index});
  // Handed out once this iteration's accepts are all in: one message per worker for them.
  if (!dispatch_task.is_queued()) loop_.impl().defer(dispatch_task);
  if (queue.size() >= o.max_pending && !paused) {
    paused = true;
    for (auto& l : listeners) l.srv->stop_accepting();
  }
}

// How many connections a worker may have handed and not yet taken: a Node worker gets one at a
// time (its handle protocol waits for each acknowledgement anyway), a kin worker a few.
std::size_t cluster_master_impl::window() const noexcept {
  return o.kind == cluster_worker_kind::node ? 1 : 8;
}

bool cluster_master_impl::takes(const worker_rec& w, std::size_t listener) const {
  if (!w.chan || !w.chan->is_open() || w.in_flight.size() >= window()) return false;
  // A Node worker takes connections for a server once its query was answered, as with Node's
  // own primary (before it says `listening`).
  if (o.kind == cluster_worker_kind::node) {
    return w.state != cluster_worker_state::stopping && w.node_listeners.count(listener) != 0;
  }
  return w.state == cluster_worker_state::ready;
}

void cluster_master_impl::dispatch() {
  if (dispatching) return;
  dispatching = true;
  while (!queue.empty()) {
    const std::size_t listener = queue.front().listener;
    worker_rec* chosen = nullptr;
    // The next worker after the last one chosen, by id, that can take it.
    auto it = workers.upper_bound(last_chosen);
    for (std::size_t n = 0; n < workers.size(); ++n, ++it) {
      if (it == workers.end()) it = workers.begin();
      if (takes(*it->second, listener)) {
        chosen = it->second.get();
        break;
      }
    }
    if (chosen == nullptr) break;
    last_chosen = chosen->id;
    pending_connection c = std::move(queue.front());
    queue.pop_front();
    hand(*chosen, std::move(c));
  }
  send_handed();
  dispatching = false;
  if (paused && queue.size() < o.max_pending / 2 && !closing) {
    paused = false;
    resume_accepting();
  }
  if (closing) {
    stop_when_queue_empty();
    // Once the workers were told to stop nothing takes a queued connection (one given back by
    // a worker that died, say): it is closed.
    if (close_flushed) queue.clear();
  }
}

void cluster_master_impl::resume_accepting() {
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    if (listeners[i].srv->is_accepting()) continue;
    (void)listeners[i].srv->listen(
        o.backlog, [this, i](std::error_code ec, unique_fd fd) { accepted(i, ec, std::move(fd)); });
  }
}

// The master keeps its copy of each connection until the worker says it took it: a worker that
// dies first leaves it to another worker. A Node worker gets each in its own newconn; a kin
// worker gets those given to it in one dispatch() together, in one message.
void cluster_master_impl::hand(worker_rec& w, pending_connection c) {
  const int fd = c.fd.get();
  if (o.kind == cluster_worker_kind::node) {
    const std::uint64_t seq = w.node_seq++;
    const std::string line =
        fmt::format(R"({{"cmd":"NODE_CLUSTER","act":"newconn","key":{},"seq":{}}})",
                    json_quote(w.node_listeners[c.listener]), seq);
    w.in_flight.emplace(seq, std::move(c));
    const int fds[] = {fd};
    w.chan->send_keeping(line, fds);
    return;
  }
  const std::uint64_t serial = ++serial_counter;
  if (w.outgoing.empty()) {
    w.outgoing = "conn";
    handing.push_back(w.id);
  }
  fmt::format_to(std::back_inserter(w.outgoing), " {} {}", serial, c.listener);
  w.outgoing_fds.push_back(fd);
  w.in_flight.emplace(serial, std::move(c));
}

void cluster_master_impl::send_handed() {
  for (const int id : handing) {
    worker_rec* w = find(id);
    if (w == nullptr || w->outgoing.empty()) continue;
    w->chan->send_keeping(w->outgoing, w->outgoing_fds);
    w->outgoing.clear();
    w->outgoing_fds.clear();
  }
  handing.clear();
}

// ---- stopping --------------------------------------------------------------------------------

void cluster_master_impl::tell_stop(worker_rec& w) {
  if (w.told_stop) return;
  w.told_stop = true;
  w.state = cluster_worker_state::stopping;
  switch (o.kind) {
    case cluster_worker_kind::kin:
      if (w.chan && w.chan->is_open()) w.chan->send("stop");
      break;
    case cluster_worker_kind::node:
      if (w.chan && w.chan->is_open()) {
        w.chan->send(
            fmt::format(R"({{"cmd":"NODE_CLUSTER","act":"disconnect","seq":{}}})", w.node_seq++));
      }
      w.node_listeners.clear();
      break;
    case cluster_worker_kind::activation:
      (void)w.child->kill(o.spawn.kill_signal);
      break;
  }
  // What is in flight to it stays there: it answers took or refused for each (its channel is
  // in order), or its channel closes and they go back to the queue. Taking them back now would
  // hand the same connection to two workers.
  start_grace(w);
  dispatch();
}

void cluster_master_impl::start_grace(worker_rec& w) {
  const int id = w.id;
  w.grace.set_callback([this, id] {
    worker_rec* me = find(id);
    if (me == nullptr) return;
    emit(cluster_event::kind::worker_killed, id,
         fmt::format("worker {} (pid {}) did not finish within {} ms: killed", id, me->pid,
                     o.grace.count()));
    (void)me->child->kill(SIGKILL);
  });
  (void)w.grace.start(o.grace);
}

void cluster_master_impl::close(std::function<void()> done) {
  if (closed) {
    if (done) loop_.post(std::move(done));
    return;
  }
  close_done = std::move(done);
  if (closing) return;
  closing = true;
  for (auto& t : respawn_timers) {
    if (t) t->stop();
  }
  if (reload) fail_reload(make_error_code(std::errc::operation_canceled), "closing");
  // No new connections: the listening sockets close (a queued connection still goes to a
  // worker if one takes it before the workers are told to stop).
  for (auto& l : listeners) l.srv->stop_accepting();
  stop_when_queue_empty();
  check_closed();
}

// Round-robin: connections already accepted are handed out before the workers are told to
// stop (bounded by grace: then they are closed).
void cluster_master_impl::stop_when_queue_empty() {
  if (close_flushed || in_close_progress) return;
  bool busy = !queue.empty();
  for (auto& [id, w] : workers) busy = busy || !w->in_flight.empty();
  bool someone_takes = false;
  for (auto& [id, w] : workers) {
    someone_takes = someone_takes || w->state == cluster_worker_state::ready;
  }
  if (busy && someone_takes && !close_flush_expired) {
    if (!close_flush) {
      close_flush = std::make_unique<timer>(loop_, [this] {
        close_flush_expired = true;
        stop_when_queue_empty();
      });
      (void)close_flush->start(o.grace);
    }
    return;  // dispatch() calls again after every event that can make progress
  }
  in_close_progress = true;
  close_flushed = true;
  if (close_flush) close_flush->stop();
  queue.clear();
  for (auto& l : listeners) l.srv->close();
  for (auto& [id, w] : workers) tell_stop(*w);
  in_close_progress = false;
  check_closed();
}

void cluster_master_impl::check_closed() {
  if (!closing || !workers.empty() || !departed.empty() || closed) return;
  queue.clear();
  closed = true;
  for (auto& l : listeners) {
    if (l.srv->is_open()) l.srv->close();
  }
  if (close_done) {
    auto cb = std::move(close_done);
    loop_.post(std::move(cb));
  }
}

void cluster_master_impl::kill_all() {
  for (auto& [id, w] : workers) (void)w->child->kill(SIGKILL);
}

// ---- reload ----------------------------------------------------------------------------------

void cluster_master_impl::start_reload(std::function<void(std::error_code)> done) {
  if (closing || !started) {
    if (done) loop_.post([done] { done(make_error_code(std::errc::operation_canceled)); });
    return;
  }
  if (reload) {
    if (done)
      loop_.post([done] { done(make_error_code(std::errc::connection_already_in_progress)); });
    return;
  }
  reload = std::make_unique<reload_rec>(loop_);
  reload->generation = next_generation++;
  reload->done = std::move(done);
  emit(cluster_event::kind::reload_started, 0,
       fmt::format("reload: starting generation {}", reload->generation));
  reload->ready_timer.set_callback([this] {
    fail_reload(make_error_code(std::errc::timed_out), "new workers were not ready in time");
  });
  (void)reload->ready_timer.start(o.ready_timeout);
  for (int slot = 0; slot < o.workers; ++slot) {
    if (auto r = start_worker(static_cast<unsigned>(slot), reload->generation); !r) {
      fail_reload(r.error().code, r.error().message());
      return;
    }
  }
  check_reload();
}

void cluster_master_impl::check_reload() {
  if (!reload) return;
  int ready = 0;
  for (auto& [id, w] : workers) {
    if (w->generation == reload->generation && w->state == cluster_worker_state::ready) ++ready;
  }
  if (ready < o.workers) return;
  const unsigned old_generation = serving_generation;
  serving_generation = reload->generation;
  auto r = std::move(reload);
  // A new generation starts afresh: respawning resumes after a crash loop.
  crash = false;
  deaths.clear();
  slot_backoff.assign(static_cast<std::size_t>(o.workers), o.backoff_initial);
  for (auto& t : respawn_timers) {
    if (t) t->stop();  // a respawn of the old generation is not needed any more
  }
  for (auto& [id, w] : workers) {
    if (w->generation != serving_generation) tell_stop(*w);
  }
  emit(cluster_event::kind::reload_done, 0,
       fmt::format("reload: generation {} serves; generation {} stops", serving_generation,
                   old_generation));
  if (r->done) loop_.post([done = std::move(r->done)] { done({}); });
}

void cluster_master_impl::fail_reload(std::error_code ec, const std::string& why) {
  if (!reload) return;
  auto r = std::move(reload);
  for (auto& [id, w] : workers) {
    if (w->generation != r->generation) continue;
    // One that may serve already (ready, or a Node worker with a server) drains like any
    // stopping worker; one that never became ready has nothing to finish.
    const bool serving = w->state == cluster_worker_state::ready || !w->in_flight.empty() ||
                         !w->node_listeners.empty();
    tell_stop(*w);
    if (!serving) (void)w->child->kill(SIGKILL);
  }
  emit(cluster_event::kind::reload_failed, 0, fmt::format("reload failed: {}", why));
  if (r->done) loop_.post([done = std::move(r->done), ec] { done(ec); });
}

// ---- status ----------------------------------------------------------------------------------

std::string cluster_master_impl::status() const {
  const char* mode = o.mode == cluster_mode::shared ? "shared" : "round-robin";
  const char* kind = o.kind == cluster_worker_kind::kin          ? "kin"
                     : o.kind == cluster_worker_kind::activation ? "activation"
                                                                 : "node";
  std::string out = fmt::format("pid {}, mode {}, {} workers, generation {}{}{}\n", ::getpid(),
                                mode, kind, serving_generation, reload ? " (reloading)" : "",
                                crash ? " (crash loop: not respawning)" : "");
  for (const listener_rec& l : listeners) {
    out += fmt::format("listening on {}\n", l.address.to_string());
  }
  std::size_t total = 0;
  for (const auto& [id, w] : workers) {
    std::string conns = w->connections < 0 ? "-" : std::to_string(w->connections);
    if (w->connections > 0) total += static_cast<std::size_t>(w->connections);
    out += fmt::format("worker {} pid {} gen {} {} connections {}\n", id, w->pid, w->generation,
                       state_name(w->state), conns);
  }
  out += fmt::format("total connections {}{}\n", total,
                     o.kind == cluster_worker_kind::kin ? "" : " (workers do not report theirs)");
  if (o.mode == cluster_mode::round_robin) {
    out += fmt::format("handed {} connections, {} waiting\n", handed_total, queue.size());
  }
  return out;
}

}  // namespace detail

// ---- cluster_master --------------------------------------------------------------------------

cluster_master::cluster_master(loop& l, cluster_options options)
    : state_(std::make_shared<detail::cluster_master_impl>(l, std::move(options))) {}

cluster_master::~cluster_master() = default;

result<void> cluster_master::start() { return state_->start(); }

void cluster_master::reload(std::function<void(std::error_code)> done) {
  state_->start_reload(std::move(done));
}

void cluster_master::close(std::function<void()> done) { state_->close(std::move(done)); }

void cluster_master::kill_workers() noexcept { state_->kill_all(); }

std::size_t cluster_master::connections() const noexcept {
  std::size_t total = 0;
  for (const auto& [id, w] : state_->workers) {
    if (w->connections > 0) total += static_cast<std::size_t>(w->connections);
  }
  return total;
}

std::vector<cluster_worker_info> cluster_master::workers() const {
  std::vector<cluster_worker_info> out;
  for (const auto& [id, w] : state_->workers) {
    cluster_worker_info info;
    info.id = id;
    info.pid = w->pid;
    info.generation = w->generation;
    info.state = w->state;
    info.connections = w->connections;
    info.slot = w->slot;
    out.push_back(info);
  }
  return out;
}

std::vector<socket_address> cluster_master::addresses() const {
  std::vector<socket_address> out;
  for (const auto& l : state_->listeners) out.push_back(l.address);
  return out;
}

std::size_t cluster_master::handed() const noexcept { return state_->handed_total; }

bool cluster_master::crash_looping() const noexcept { return state_->crash; }

std::string cluster_master::status() const { return state_->status(); }

void cluster_master::on_event(std::function<void(const cluster_event&)> cb) {
  state_->event_cb = std::move(cb);
}

}  // namespace kin
