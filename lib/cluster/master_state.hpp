// The cluster master's state, shared by master.cpp (listeners, workers, hand-over, respawn,
// reload, close) and master_node.cpp (Node's cluster protocol).
#pragma once

#include <kin/channel.hpp>
#include <kin/cluster.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/server.hpp>
#include <kin/udp.hpp>

#include "cluster/cluster_internal.hpp"
#include "cluster/node_cluster.hpp"
#include "loop_impl.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kin::detail {

/// A connection the master accepted (round-robin) and has not seen a worker take.
struct pending_connection {
  unique_fd fd;
  std::size_t listener = 0;
};

struct listener_rec {
  explicit listener_rec(listener_socket s) noexcept : srv(std::move(s)) {}
  listener_socket srv;
  socket_address address;
  std::string name;
  std::string node_key;            ///< bound for a Node worker's query: the query's key
  std::string node_data = "null";  ///< the custom data of the first Node query
};

struct worker_rec {
  explicit worker_rec(loop& l) : grace(l) {}
  int id = 0;
  unsigned slot = 0;
  unsigned generation = 0;
  cluster_worker_state state = cluster_worker_state::starting;
  std::optional<process> child;  ///< set once started
  std::unique_ptr<channel> chan;
  pid_t pid = 0;
  long connections = -1;
  std::chrono::steady_clock::time_point started_at;
  /// Handed and not yet taken, by serial (kin) or by the newconn's seq (Node).
  std::map<std::uint64_t, pending_connection> in_flight;
  /// Node, round-robin: the listeners this worker serves, with the key it knows each by.
  std::map<std::size_t, std::string> node_listeners;
  std::uint64_t node_seq = 0;  ///< the seq of our next message to it
  /// kin: the conn message being built in this dispatch(), and its descriptors.
  std::string outgoing;
  std::vector<int> outgoing_fds;
  timer grace;  ///< SIGKILL when a stopping worker runs past the grace time
  bool told_stop = false;
  bool exited_after_disconnect = false;  ///< Node: it said it leaves on its own
  bool exited = false;
};

struct reload_rec {
  explicit reload_rec(loop& l) : ready_timer(l) {}
  unsigned generation = 0;
  std::function<void(std::error_code)> done;
  timer ready_timer;
};

struct cluster_master_impl : std::enable_shared_from_this<cluster_master_impl> {
  cluster_master_impl(loop& l, cluster_options options);
  ~cluster_master_impl();
  cluster_master_impl(const cluster_master_impl&) = delete;
  cluster_master_impl& operator=(const cluster_master_impl&) = delete;

  result<void> start();
  result<void> stop_start(std::error_code ec);
  std::size_t add_listener(listener_socket srv, std::string name, std::string node_key);
  result<void> listen_on(std::size_t index);
  result<void, spawn_error> start_worker(unsigned slot, unsigned generation);
  void send_hello(worker_rec& w);
  worker_rec* find(int id);
  void kin_message(int id, std::string_view message);
  void node_message(int id, std::string_view message);
  void node_query(worker_rec& w, const node_cluster_message& m);
  void node_udp_query(worker_rec& w, const node_cluster_message& m);
  void node_reply(worker_rec& w, std::int64_t ack, std::string_view fields, int fd = -1);
  void became_ready(worker_rec& w);
  void requeue(worker_rec& w);
  void give_back(worker_rec& w, std::uint64_t serial);
  void channel_closed(int id);
  void forget_departed(int id);
  void exited(int id, std::error_code ec, int status, int signal);
  void unasked_death(int id, unsigned slot, const std::string& what,
                     std::chrono::nanoseconds lived);
  void respawn(unsigned slot);
  void schedule_respawn(unsigned slot, std::chrono::milliseconds delay);
  void accepted(std::size_t index, std::error_code ec, unique_fd fd);
  [[nodiscard]] std::size_t window() const noexcept;
  [[nodiscard]] bool takes(const worker_rec& w, std::size_t listener) const;
  void dispatch();
  void resume_accepting();
  void hand(worker_rec& w, pending_connection c);
  void send_handed();
  static void dispatch_thunk(void* self) noexcept {
    static_cast<cluster_master_impl*>(self)->dispatch();
  }
  void tell_stop(worker_rec& w);
  void start_grace(worker_rec& w);
  void close(std::function<void()> done);
  void stop_when_queue_empty();
  void check_closed();
  void kill_all();
  void start_reload(std::function<void(std::error_code)> done);
  void check_reload();
  void fail_reload(std::error_code ec, const std::string& why);
  [[nodiscard]] std::string status() const;
  void emit(cluster_event::kind what, int worker_id, std::string text);

  loop& loop_;
  cluster_options o;
  std::vector<listener_rec> listeners;
  /// Datagram sockets bound for Node workers, by key.
  std::map<std::string, std::unique_ptr<udp_socket>> node_udp;
  std::map<int, std::unique_ptr<worker_rec>> workers;  // by id: ids grow, so in start order
  /// Exited with connections in flight: kept until their channel is read to its end.
  std::map<int, std::unique_ptr<worker_rec>> departed;
  std::deque<pending_connection> queue;
  /// dispatch() at the start of the next iteration, after accepts.
  deferred_task dispatch_task;
  std::vector<int> handing;  ///< ids of workers with an outgoing message
  std::uint64_t serial_counter = 0;
  std::size_t handed_total = 0;
  int last_chosen = 0;
  int next_id = 1;
  unsigned serving_generation = 1;
  unsigned next_generation = 2;
  std::vector<std::chrono::milliseconds> slot_backoff;
  std::vector<std::unique_ptr<timer>> respawn_timers;
  std::deque<std::chrono::steady_clock::time_point> deaths;
  std::unique_ptr<reload_rec> reload;
  std::unique_ptr<timer> close_flush;
  std::function<void()> close_done;
  std::function<void(const cluster_event&)> event_cb;
  bool crash = false;
  bool started = false;
  bool closing = false;
  bool closed = false;
  bool close_flush_expired = false;
  bool close_flushed = false;  ///< the workers were told to stop
  bool in_close_progress = false;
  bool paused = false;
  bool dispatching = false;
};

}  // namespace kin::detail
