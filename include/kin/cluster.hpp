// Cluster: a master that owns listening sockets and supervises N worker processes, and the
// worker side of kin's own cluster protocol.
//
// Three kinds of worker:
//   kin         a program that uses kin::cluster_worker: it gets its listeners (shared mode) or
//               each connection (round-robin mode) over a native kin channel, and reports when
//               the connections it was given close, so the master knows the live count.
//   activation  any program that supports socket activation: the listening sockets are its
//               descriptors 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set, as
//               systemd sets them (shared mode only).
//   node        an unmodified Node.js program that uses the `cluster` module: the master is its
//               cluster primary, speaking Node's cluster protocol over Node's IPC channel.
//
// Two scheduling modes, as in Node's cluster module: shared (every worker accepts on the
// listening socket itself) and round-robin (the master accepts, and hands each connection to the
// next worker that is ready).
#pragma once

#include <kin/address.hpp>
#include <kin/channel.hpp>
#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace kin {

namespace detail {
struct cluster_master_impl;
struct cluster_worker_impl;
}  // namespace detail

enum class cluster_mode {
  shared,       ///< every worker gets the listening sockets and accepts for itself
  round_robin,  ///< the master accepts and hands connections to its workers in turn
};

enum class cluster_worker_kind {
  kin,         ///< a kin::cluster_worker program (native channel)
  activation,  ///< any socket-activated program: LISTEN_FDS, descriptors from 3 (shared only)
  node,        ///< a Node.js program using the cluster module (Node's cluster protocol)
};

/// A listening socket of the master: its descriptor, the address it listens on (port 0
/// resolved) and its name (the LISTEN_FDNAMES entry, or the address as given).
struct cluster_listener {
  unique_fd fd;
  socket_address address;
  std::string name;
};

/// Parses a listen address: `HOST:PORT` (IPv4 literal), `[IPV6]:PORT`, `unix:PATH`, or a path
/// that starts with '/' or '.'. Errors: EINVAL, with nothing bound.
KIN_API result<socket_address> parse_listen_address(std::string_view text);

/// The listening sockets systemd (or kin-cluster, or any socket-activation manager) passed to
/// this process: descriptors 3 .. 3+LISTEN_FDS-1, when LISTEN_PID is this process's pid. Each
/// is checked to be a listening stream socket and made close-on-exec; LISTEN_FDS, LISTEN_PID
/// and LISTEN_FDNAMES are removed from the environment (kin::this_process's store).
/// No LISTEN_FDS, or a LISTEN_PID of another process: an empty vector (the variables are
/// left alone). Errors: EINVAL for a malformed variable, or a descriptor that is not a listening
/// stream socket (ENOTSOCK when it is not a socket at all); then no descriptor is taken.
KIN_API result<std::vector<cluster_listener>> listeners_from_environment();

struct cluster_options {
  /// The worker program (a path, or a name looked up in PATH) and its arguments (after the
  /// program's name, which is args[0] of the worker).
  std::string program;
  std::vector<std::string> args;
  /// Environment, cwd, stdio, credentials of the workers (file, args and the channel's
  /// descriptor are set by the master). Default: stdin /dev/null, stdout and stderr inherited.
  /// kin and Node workers notice a master that died by their channel's end (a kin worker then
  /// finishes its connections); activation workers have no channel: spawn.parent_death_signal
  /// (Linux, FreeBSD) makes them go too — on Linux when the thread that spawned them ends (the
  /// one that calls start() and the one that runs the loop).
  spawn_options spawn = default_spawn();

  cluster_worker_kind kind = cluster_worker_kind::kin;
  cluster_mode mode = cluster_mode::round_robin;
  int workers = 2;

  /// Addresses to bind (see parse_listen_address) and sockets already listening (for example
  /// from listeners_from_environment()); the master owns both. Node workers may also ask for
  /// listeners the master does not have yet: the master binds them, as Node's primary does.
  std::vector<std::string> listen;
  std::vector<cluster_listener> listeners;
  int backlog = 511;

  /// How long stopping workers (close(), reload()) get to finish their connections before
  /// they are sent SIGKILL.
  std::chrono::milliseconds grace{30'000};
  /// How long a new worker has to become ready (reload(); a worker that is not ready by then is
  /// killed and the reload fails).
  std::chrono::milliseconds ready_timeout{30'000};
  /// A Node worker that disconnects itself (cluster.worker.disconnect()) is replaced at once.
  /// A worker that dies unasked is started again after a delay that doubles with every death
  /// in a row, from backoff_initial up to backoff_max. A worker that lived longer than
  /// backoff_max resets the delay.
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{10'000};
  /// Crash loop: more than crash_limit unasked deaths within crash_window stop respawning.
  int crash_limit = 5;
  std::chrono::milliseconds crash_window{10'000};
  /// Round-robin: connections accepted and waiting for a ready worker, above which the master
  /// stops accepting (the kernel's backlog holds the rest).
  std::size_t max_pending = 1024;

  static spawn_options default_spawn() {
    spawn_options s;
    s.stdio = {stdio::ignore(), stdio::inherit(), stdio::inherit()};
    return s;
  }
};

enum class cluster_worker_state {
  starting,  ///< started, not ready yet
  ready,     ///< takes connections
  stopping,  ///< told to stop: finishes its connections, then exits (or is killed after grace)
};

struct cluster_worker_info {
  int id = 0;  ///< 1, 2, ... in the order workers were started (Node's NODE_UNIQUE_ID)
  pid_t pid = 0;
  unsigned generation = 0;  ///< 1 for the first workers, +1 with every reload
  cluster_worker_state state = cluster_worker_state::starting;
  /// Live connections in the worker: those it was handed (round-robin) or accepted (shared)
  /// and has not closed. -1 when the worker cannot say (activation and Node workers).
  long connections = -1;
  unsigned slot = 0;  ///< the worker's place, 0 .. workers-1; its respawns keep it
};

/// What happened, for logs: `text` is a sentence meant for people.
struct cluster_event {
  enum class kind {
    worker_started,
    worker_ready,
    worker_exited,   ///< unasked (a respawn follows unless crash_loop)
    worker_retired,  ///< a stopping worker exited
    worker_killed,   ///< a stopping worker ran past grace
    respawn_scheduled,
    crash_loop,  ///< respawning stopped
    reload_started,
    reload_done,
    reload_failed,
    listening,  ///< a listener is bound (text: its address); Node workers can add some later
    error,
  };
  kind what;
  int worker_id = 0;
  std::string text;
};

/// The master. Not copyable or movable; destroy it before its loop. Destroying a master that
/// has workers kills them (SIGKILL) and leaves their reaping to the loop.
class KIN_API cluster_master {
 public:
  cluster_master(loop& l, cluster_options options);
  ~cluster_master();
  cluster_master(const cluster_master&) = delete;
  cluster_master& operator=(const cluster_master&) = delete;

  /// Binds the listeners and starts the workers. Errors: EINVAL for options that do not fit
  /// (no program, workers < 1, activation workers with round-robin, no listener for kin or
  /// activation workers), a bind or listen error, the first worker's spawn error. On error
  /// nothing is left running.
  result<void> start();

  /// Starts a new generation of workers; once every one of them is ready, the old ones are
  /// told to stop (they finish their connections, SIGKILL after grace) and retired. `done`
  /// gets an empty error code once the old generation is told to stop, or the error that
  /// made the reload fail (a new worker that could not start, died or was not ready within
  /// ready_timeout: the new workers are stopped — those already ready drain like any stopping
  /// worker, the others are killed — and the old ones keep serving). EALREADY if a reload is
  /// running; ECANCELED if close() was called meanwhile. A reload that completes starts the
  /// respawn backoff and the crash-loop count afresh (respawning resumes after a crash loop).
  /// The listening sockets stay open throughout, so no connection is refused.
  void reload(std::function<void(std::error_code)> done = {});

  /// Stops accepting, hands out the connections already accepted (round-robin; for at most
  /// grace), tells every worker to stop, and calls `done` (on a later iteration) once every
  /// worker has exited (those still running after grace are killed). Calling it again while it
  /// runs replaces `done`; after it completed, `done` is called at once.
  void close(std::function<void()> done = {});
  /// Sends SIGKILL to every worker now (a second SIGTERM to a supervisor); close() then
  /// completes as they are reaped.
  void kill_workers() noexcept;

  /// Live connections across all workers that report them (kin workers).
  [[nodiscard]] std::size_t connections() const noexcept;
  /// The workers that run now (stopping ones included), by id.
  [[nodiscard]] std::vector<cluster_worker_info> workers() const;
  /// The listening addresses (port 0 resolved), in the order of the options.
  [[nodiscard]] std::vector<socket_address> addresses() const;
  /// Connections handed to workers since start (round-robin) — for benchmarks and tests.
  [[nodiscard]] std::size_t handed() const noexcept;
  /// True once the crash-loop guard stopped respawning.
  [[nodiscard]] bool crash_looping() const noexcept;
  /// A few lines for people: mode, listeners, one line per worker, totals.
  [[nodiscard]] std::string status() const;

  /// Called for each event, on the loop's thread, from inside the master: it must not destroy
  /// the master (call close(), or post the destruction).
  void on_event(std::function<void(const cluster_event&)> cb);

 private:
  std::shared_ptr<detail::cluster_master_impl> state_;
};

/// A live connection handed to a kin worker. Destroying (or reset()ting) it tells the master the
/// connection closed: keep it as long as the connection is open. Movable; it may outlive the
/// cluster_worker (then it reports nothing).
class KIN_API cluster_ticket {
 public:
  cluster_ticket() noexcept = default;
  cluster_ticket(cluster_ticket&& other) noexcept;
  cluster_ticket& operator=(cluster_ticket&& other) noexcept;
  cluster_ticket(const cluster_ticket&) = delete;
  cluster_ticket& operator=(const cluster_ticket&) = delete;
  ~cluster_ticket() { reset(); }
  void reset() noexcept;
  [[nodiscard]] bool holds() const noexcept { return held_; }

 private:
  friend struct detail::cluster_worker_impl;
  explicit cluster_ticket(std::weak_ptr<detail::cluster_worker_impl> state) noexcept
      : state_(std::move(state)), held_(true) {}
  std::weak_ptr<detail::cluster_worker_impl> state_;
  bool held_ = false;
};

/// The worker side for kin workers. A worker gets its connections with on_connection(): in
/// round-robin mode each one the master hands over, in shared mode each one it accepts itself
/// on the listeners the master sent. It is ready (counted by a reload) once start() was called
/// and, in shared mode, its listeners arrived.
///
/// When the master says stop (a reload or close()), or its channel closes (the master died),
/// the worker stops taking connections (it closes its copies of the listeners), on_stop is
/// called, and once every ticket is released the channel is closed; a worker whose loop has
/// nothing else then returns from loop::run() and exits.
class KIN_API cluster_worker {
 public:
  using connection_callback =
      std::function<void(any_handle connection, std::size_t listener, cluster_ticket ticket)>;

  /// The channel to the master (KIN_CHANNEL_FD, as kin::fork sets it). Errors: as
  /// channel::from_environment (kin::errc::no_channel when this process was not started by a
  /// cluster master).
  static result<std::unique_ptr<cluster_worker>> from_environment(loop& l);
  ~cluster_worker();
  cluster_worker(const cluster_worker&) = delete;
  cluster_worker& operator=(const cluster_worker&) = delete;

  /// Starts taking connections; tells the master it is ready.
  void start(connection_callback cb);
  void on_stop(std::function<void()> cb);
  /// Live connections (tickets held).
  [[nodiscard]] std::size_t connections() const noexcept;
  /// True once the master said stop or went away.
  [[nodiscard]] bool stopping() const noexcept;

 private:
  explicit cluster_worker(std::shared_ptr<detail::cluster_worker_impl> state) noexcept;
  std::shared_ptr<detail::cluster_worker_impl> state_;
};

}  // namespace kin
