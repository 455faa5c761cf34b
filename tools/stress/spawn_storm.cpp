// kin-spawn-storm: a stress test of kin::spawn and kin::process. Threads, each running its own
// loop, keep children in flight with random programs, stdio plans, early kills and failing
// spawns, while another thread churns close-on-exec descriptors and now and then holds one that
// is not; every outcome is checked exactly, and so are DESIGN.md's invariants 1-5 (children see
// only what they were given, every child reaped exactly once, no zombie, no leaked descriptor).
// Exits 0 only if nothing was violated.
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

// How long a child may take from spawn to its last byte and its exit, and how long it then has
// to be reaped once killed. Generous: a sanitized build on two CPUs with 128 children in flight
// is slow, and a child that overruns is a violation.
constexpr auto child_deadline = 20s;
constexpr auto reap_grace = 10s;
// How long past --seconds the workers may take before the run is declared stuck.
constexpr auto stuck_after = 60s;
// Violations printed in full; the rest are only counted.
constexpr int violations_shown = 50;

// ---- process-wide state ------------------------------------------------------------------------

struct config {
  int threads = 4;
  double seconds = 10;
  std::uint64_t seed = 0;
  int max_inflight = 16;
  bool verbose = false;
};

// Every violation, from every thread.
class violation_log {
 public:
  void add(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (++count_ <= violations_shown) {
      std::fprintf(stderr, "VIOLATION: %s\n", what.c_str());
    } else if (count_ == violations_shown + 1) {
      std::fprintf(stderr, "VIOLATION: (more violations are counted, not shown)\n");
    }
  }
  int count() {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }

 private:
  std::mutex mutex_;
  int count_ = 0;
};

violation_log violations;

// The numbers of the descriptors the churn thread opened without close-on-exec. A child spawned
// with close_other_fds off may show any of them; with it on, none. `busy` is set before such a
// descriptor is opened and cleared once its number is recorded, so a checker that finds an
// unknown number can tell "not recorded yet" from "never the rogue's".
class rogue_registry {
 public:
  explicit rogue_registry(int limit)
      : seen_(std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(limit))),
        limit_(limit) {}
  void begin() { busy_.store(true); }
  void opened(int fd) {
    if (fd >= 0 && fd < limit_) seen_[static_cast<std::size_t>(fd)].store(true);
  }
  void end() { busy_.store(false); }
  // True if `fd` was (or is being) one of the rogue's numbers.
  [[nodiscard]] bool may_be(int fd) const {
    if (fd < 0 || fd >= limit_) return false;
    const auto give_up = clock_type::now() + 2s;
    for (;;) {
      if (seen_[static_cast<std::size_t>(fd)].load()) return true;
      if (!busy_.load()) return seen_[static_cast<std::size_t>(fd)].load();
      if (clock_type::now() > give_up) return false;
      std::this_thread::sleep_for(100us);
    }
  }

 private:
  std::unique_ptr<std::atomic<bool>[]> seen_;
  int limit_;
  std::atomic<bool> busy_{false};
};

// What every thread reads and never changes (but the rogue registry).
struct shared_state {
  config cfg;
  clock_type::time_point end;
  std::string tmpdir;
  std::string not_executable;  // mode 0644
  std::string no_shebang;      // mode 0755, text without "#!"
  std::string helper;          // KIN_TEST_CHILD, or empty
  std::set<int> inheritable;   // descriptors above 2 open without close-on-exec at the start
  int rogue_high = -1;         // a fixed high number the rogue also uses (-1: none)
  std::unique_ptr<rogue_registry> rogue;
};

// ---- /proc
// ---------------------------------------------------------------------------------------

std::set<int> numbers_in(const char* dir_path) {
  std::set<int> out;
  DIR* d = ::opendir(dir_path);
  if (d == nullptr) return out;
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int n = std::atoi(e->d_name);
    if (n != own) out.insert(n);
  }
  ::closedir(d);
  return out;
}

std::set<int> open_fds() { return numbers_in("/proc/self/fd"); }

std::set<int> children_of_task(const std::string& task) {
  std::set<int> pids;
  const std::string path = "/proc/self/task/" + task + "/children";
  if (FILE* f = std::fopen(path.c_str(), "re")) {
    int pid = 0;
    while (std::fscanf(f, "%d", &pid) == 1) pids.insert(pid);
    std::fclose(f);
  }
  return pids;
}

// The children (live or zombie) of every thread of this process.
std::set<int> all_children() {
  std::set<int> pids;
  for (int task : numbers_in("/proc/self/task")) {
    for (int pid : children_of_task(std::to_string(task))) pids.insert(pid);
  }
  return pids;
}

std::set<int> children_of_this_thread() {
  return children_of_task(std::to_string(static_cast<long>(::syscall(SYS_gettid))));
}

std::string fd_target(int fd) {
  char buf[512];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  if (n < 0) return "?";
  return std::string(buf, static_cast<std::size_t>(n));
}

// `s` with every byte that is not printable ASCII as \xNN.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char ch : s) {
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out += static_cast<char>(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    }
  }
  return out;
}

std::string join(const std::set<int>& s) {
  std::string out;
  for (int n : s) out += (out.empty() ? "" : ",") + std::to_string(n);
  return out.empty() ? "{}" : "{" + out + "}";
}

// ---- what a child is and what it must do -----------------------------------------------------

enum class program {
  true_exit,        // /bin/true: status 0
  false_exit,       // /bin/false: status 1
  exit_n,           // sh -c 'exit N'
  self_kill,        // sh -c 'kill -s SIG $$': dies by SIG
  cat_echo,         // (sh -c) cat, fed through its stdin: echoes exactly
  writer,           // head -c N /dev/zero to some descriptors: exact counts
  lister,           // lists /proc/self/fd: exactly the planned descriptors
  sleep_kill,       // sleep 5, kill(SIG) after a random delay: dies by SIG
  sleep_terminate,  // sleep 5, terminate(grace) with a random kill_signal: dies by it
  trap_terminate,   // sh ignoring SIGTERM then exec sleep: terminate escalates to SIGKILL
  race_kill,        // /bin/true killed at once: status 0 or SIGKILL
  abandon,          // the process is destroyed while the child runs: the loop still reaps it
  missing_abs,      // exec ENOENT, an absolute path
  missing_path,     // exec ENOENT, a name searched in PATH
  bad_cwd,          // chdir ENOENT
  not_executable,   // exec EACCES, a file without execute permission
  directory,        // exec EACCES, a directory
  no_shebang,       // exec ENOEXEC, an executable text file without "#!"
  bad_file,         // open ENOENT, a stdio::file in a missing directory
  bad_option,       // prepare EINVAL: empty args, kill_signal 0 or 999, stdio::fd(-1)
  count
};

constexpr std::size_t program_count = static_cast<std::size_t>(program::count);

const char* name_of(program p) {
  static constexpr const char* names[program_count] = {
      "true",           "false",     "exit-n",      "self-kill",       "cat-echo",
      "writer",         "lister",    "sleep-kill",  "sleep-terminate", "trap-terminate",
      "race-kill",      "abandon",   "missing-abs", "missing-path",    "bad-cwd",
      "not-executable", "directory", "no-shebang",  "bad-file",        "bad-option"};
  return names[static_cast<std::size_t>(p)];
}

// Relative frequencies of the programs (same order).
constexpr double program_weights[program_count] = {6, 4, 6, 6, 9, 10, 10, 5, 4, 3,
                                                   4, 4, 2, 2, 2, 2,  1,  1, 2, 1};

bool expects_spawn_error(program p) { return p >= program::missing_abs; }

// One child descriptor number in the plan.
enum class slot_kind {
  closed,
  inherit,    // only 0-2: the parent always has them
  ignore,     // /dev/null
  pipe_in,    // kin's pipe, the child reads
  pipe_out,   // kin's pipe, the child writes
  duplex,     // kin's socketpair
  fd_in,      // our own pipe as stdio::fd: the child gets the read end
  fd_out,     // our own pipe as stdio::fd: the child gets the write end
  file_null,  // stdio::file("/dev/null")
  file_out,   // stdio::file(a new file in the temporary directory)
};

const char* name_of(slot_kind k) {
  switch (k) {
    case slot_kind::closed:
      return "closed";
    case slot_kind::inherit:
      return "inherit";
    case slot_kind::ignore:
      return "ignore";
    case slot_kind::pipe_in:
      return "pipe-in";
    case slot_kind::pipe_out:
      return "pipe-out";
    case slot_kind::duplex:
      return "duplex";
    case slot_kind::fd_in:
      return "fd-in";
    case slot_kind::fd_out:
      return "fd-out";
    case slot_kind::file_null:
      return "file-null";
    case slot_kind::file_out:
      return "file-out";
  }
  return "?";
}

bool child_can_write(slot_kind k) {
  return k == slot_kind::pipe_out || k == slot_kind::duplex || k == slot_kind::fd_out ||
         k == slot_kind::file_out;
}
bool parent_reads(slot_kind k) {
  return k == slot_kind::pipe_out || k == slot_kind::duplex || k == slot_kind::fd_out;
}
bool parent_writes(slot_kind k) {
  return k == slot_kind::pipe_in || k == slot_kind::duplex || k == slot_kind::fd_in;
}
bool kin_owns(slot_kind k) {
  return k == slot_kind::pipe_in || k == slot_kind::pipe_out || k == slot_kind::duplex;
}

// Signals whose default action ends a process without a core dump. SIGHUP and SIGUSR1 are
// ignored in this process and SIGUSR2 is blocked in every thread: children must still die by
// them (kin resets dispositions and the mask in the child).
constexpr int lethal_signals[] = {SIGTERM, SIGKILL, SIGINT,  SIGHUP,
                                  SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE};
const char* shell_name_of(int sig) {
  switch (sig) {
    case SIGTERM:
      return "TERM";
    case SIGKILL:
      return "KILL";
    case SIGHUP:
      return "HUP";
    case SIGUSR1:
      return "USR1";
    case SIGUSR2:
      return "USR2";
    case SIGALRM:
      return "ALRM";
    default:
      return nullptr;
  }
}

// What arrives on a descriptor the parent reads.
enum class data_kind { nothing, zeros, echo, listing, ready };

struct channel {
  int slot = -1;
  slot_kind kind = slot_kind::closed;
  kin::stream* s = nullptr;          // the parent's end: kin's (the process owns it) or own
  std::unique_ptr<kin::stream> own;  // for fd_in and fd_out
  data_kind expect = data_kind::nothing;
  std::size_t want = 0;  // zeros
  std::size_t got = 0;
  bool wrong_byte = false;
  std::string text;  // listing, ready
  bool reading = false;
  bool eof = false;
  std::error_code read_error;
};

struct out_file {
  int slot;
  std::string path;
  std::size_t want;
};

struct child {
  std::uint64_t id = 0;
  program prog = program::true_exit;
  std::string desc;  // program, plan, options: for messages
  std::vector<slot_kind> plan;
  bool close_other_fds = true;
  bool use_ls = false;  // lister: /bin/ls (its own directory descriptor shows up) or the helper

  // The outcome expected.
  int want_status = 0;          // exit status, or -1
  int want_signal = 0;          // terminating signal, or 0
  bool status_or_kill = false;  // race_kill: status 0 or SIGKILL both fine
  kin::spawn_step want_step = kin::spawn_step::exec;
  int want_errno = 0;
  std::string want_path;

  std::optional<kin::process> proc;
  pid_t pid = -1;
  std::vector<std::unique_ptr<channel>> channels;
  std::vector<out_file> files;
  std::map<int, std::size_t> zeros;  // writer: child fd -> zero bytes it writes there
  std::string payload;               // cat_echo
  std::unique_ptr<kin::timer> deadline;
  std::unique_ptr<kin::timer> action;
  int kill_signal = SIGTERM;
  int send_signal = 0;
  std::chrono::milliseconds grace{0};

  int exit_calls = 0;
  std::error_code exit_ec;
  int status = -1;
  int signo = 0;
  int pending_writes = 0;
  bool done = false;
  bool overdue = false;  // the deadline passed; the outcome is no longer checked
  bool abandoned = false;
  bool dropped = false;  // abandoned, and its process destroyed
  kin::unique_fd pidfd;  // abandoned: our own watch on the child, to bound it
};

// Counters of one thread, summed at the end.
struct tally {
  std::uint64_t spawned[program_count] = {};
  std::uint64_t finished = 0;
  std::uint64_t exited = 0;
  std::uint64_t signalled = 0;
  std::uint64_t bytes_checked = 0;
  std::uint64_t listers_closing = 0;
  std::uint64_t listers_keeping = 0;
  std::uint64_t kills = 0;
  std::uint64_t terminates = 0;
  std::uint64_t abandoned = 0;
  std::uint64_t rogue_fds = 0;
  std::uint64_t churned_fds = 0;
  std::map<std::string, std::uint64_t> errors;  // "exec ENOENT" -> count

  void add(const tally& o) {
    for (std::size_t i = 0; i < program_count; ++i) spawned[i] += o.spawned[i];
    finished += o.finished;
    exited += o.exited;
    signalled += o.signalled;
    bytes_checked += o.bytes_checked;
    listers_closing += o.listers_closing;
    listers_keeping += o.listers_keeping;
    kills += o.kills;
    terminates += o.terminates;
    abandoned += o.abandoned;
    rogue_fds += o.rogue_fds;
    churned_fds += o.churned_fds;
    for (const auto& [k, v] : o.errors) errors[k] += v;
  }
};

const char* errno_name(int e) {
  switch (e) {
    case ENOENT:
      return "ENOENT";
    case EACCES:
      return "EACCES";
    case ENOEXEC:
      return "ENOEXEC";
    case EINVAL:
      return "EINVAL";
    case EBADF:
      return "EBADF";
    case EMFILE:
      return "EMFILE";
    case EAGAIN:
      return "EAGAIN";
    case ENOMEM:
      return "ENOMEM";
    default:
      return nullptr;
  }
}

std::string errno_text(int e) {
  const char* n = errno_name(e);
  return n != nullptr ? std::string(n) : "errno " + std::to_string(e);
}

std::string code_text(const std::error_code& ec) {
  if (!ec) return "no error";
  if (ec.category() == std::system_category()) return errno_text(ec.value());
  return ec.category().name() + std::string(":") + ec.message();
}

// ---- one thread: a loop and its children -------------------------------------------------------

class worker {
 public:
  worker(shared_state& shared, int index, tally& counts)
      : shared_(shared),
        index_(index),
        counts_(counts),
        rng_(shared.cfg.seed * 0x9e3779b97f4a7c15ULL + static_cast<std::uint64_t>(index) + 1),
        programs_(std::begin(program_weights), std::end(program_weights)) {}

  void run() {
    kin::loop l;
    loop_ = &l;
    l.post([this] { top_up(); });
    l.run();
    // Everything posted has run and nothing is referenced: every exit callback due was called.
    check_end_of_thread();
    children_.clear();
    loop_ = nullptr;
  }

 private:
  // ---- randomness ----
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  template <class T, std::size_t N>
  T one_of(const T (&items)[N]) {
    return items[static_cast<std::size_t>(pick(0, static_cast<int>(N) - 1))];
  }
  std::size_t random_size(std::size_t small, std::size_t big) {
    const int r = pick(0, 99);
    if (r < 20) return static_cast<std::size_t>(pick(0, 16));
    if (r < 85) return static_cast<std::size_t>(pick(0, static_cast<int>(small)));
    return static_cast<std::size_t>(pick(static_cast<int>(small), static_cast<int>(big)));
  }

  slot_kind random_slot(int slot) {
    static constexpr slot_kind stdin_kinds[] = {
        slot_kind::closed, slot_kind::inherit, slot_kind::inherit, slot_kind::ignore,
        slot_kind::ignore, slot_kind::pipe_in, slot_kind::pipe_in, slot_kind::pipe_in,
        slot_kind::duplex, slot_kind::fd_in,   slot_kind::fd_in,   slot_kind::file_null};
    static constexpr slot_kind output_kinds[] = {
        slot_kind::closed,   slot_kind::inherit,  slot_kind::ignore,   slot_kind::ignore,
        slot_kind::pipe_out, slot_kind::pipe_out, slot_kind::pipe_out, slot_kind::duplex,
        slot_kind::fd_out,   slot_kind::fd_out,   slot_kind::file_out};
    static constexpr slot_kind extra_kinds[] = {
        slot_kind::closed,   slot_kind::closed,    slot_kind::ignore,  slot_kind::pipe_out,
        slot_kind::pipe_out, slot_kind::pipe_in,   slot_kind::duplex,  slot_kind::fd_out,
        slot_kind::fd_in,    slot_kind::file_null, slot_kind::file_out};
    if (slot == 0) return one_of(stdin_kinds);
    if (slot <= 2) return one_of(output_kinds);
    return one_of(extra_kinds);
  }

  // ---- spawning ----
  void top_up() {
    int started = 0;
    while (inflight_ < shared_.cfg.max_inflight && clock_type::now() < shared_.end) {
      spawn_one();
      // Let the loop breathe when spawns keep failing at once.
      if (++started >= 4 * shared_.cfg.max_inflight) {
        loop_->post([this] { top_up(); });
        return;
      }
    }
  }

  void spawn_one() {
    children_.push_back(std::make_unique<child>());
    child& c = *children_.back();
    c.id = next_id_++;
    c.prog = static_cast<program>(programs_(rng_));
    ++counts_.spawned[static_cast<std::size_t>(c.prog)];

    // The plan: 0-2 always, sometimes more.
    const int slots = 3 + (chance(0.4) ? pick(1, 3) : 0);
    for (int i = 0; i < slots; ++i) c.plan.push_back(random_slot(i));
    c.close_other_fds = chance(0.8);

    kin::spawn_options o;
    o.close_other_fds = c.close_other_fds;
    shape(c, o);
    build_plan(c, o);
    c.desc = describe(c, o);

    // Our own pipes for stdio::fd entries: [slot] -> (our end, the child's end).
    std::map<int, std::pair<kin::unique_fd, kin::unique_fd>> own_pipes;
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      const slot_kind k = c.plan[i];
      if (k != slot_kind::fd_in && k != slot_kind::fd_out) continue;
      auto p = kin::make_pipe();
      if (!p) {
        violation(c, "make_pipe failed: " + code_text(p.error()));
        c.done = true;
        return;
      }
      auto& entry = own_pipes[static_cast<int>(i)];
      if (k == slot_kind::fd_in) {
        entry = {std::move(p->write), std::move(p->read)};
      } else {
        entry = {std::move(p->read), std::move(p->write)};
      }
      o.stdio[i] = kin::stdio::fd(entry.second.get());
    }

    auto r = kin::spawn(*loop_, o);
    for (auto& [slot, ends] : own_pipes) ends.second.reset();  // the child has its copy

    if (expects_spawn_error(c.prog)) {
      if (r) {
        violation(c, "spawn succeeded, expected " + std::string(kin::to_string(c.want_step)) + " " +
                         errno_text(c.want_errno));
        // Let it run its course; its outcome is not checked.
        c.overdue = true;
        start_child(c, std::move(*r), own_pipes);
        return;
      }
      check_spawn_error(c, r.error(), own_pipes);
      c.done = true;
      return;
    }
    if (!r) {
      violation(c, "spawn failed: " + r.error().message());
      c.done = true;
      remove_files(c);
      return;
    }
    start_child(c, std::move(*r), own_pipes);
  }

  // Chooses the program and its arguments, and adjusts the plan to what it needs.
  void shape(child& c, kin::spawn_options& o) {
    auto need_output = [&](int slot) {
      const slot_kind k = c.plan[static_cast<std::size_t>(slot)];
      if (k != slot_kind::pipe_out && k != slot_kind::fd_out && k != slot_kind::duplex) {
        c.plan[static_cast<std::size_t>(slot)] =
            chance(0.7) ? slot_kind::pipe_out : slot_kind::fd_out;
      }
    };
    auto sh = [&](std::string script) {
      o.file = chance(0.5) ? "/bin/sh" : "sh";
      o.args = {"sh", "-c", std::move(script)};
    };
    switch (c.prog) {
      case program::true_exit:
        o.file = "/bin/true";
        o.args = {"true"};
        break;
      case program::false_exit:
        o.file = "false";
        o.args = {"false"};
        c.want_status = 1;
        break;
      case program::exit_n:
        c.want_status = pick(0, 255);
        sh("exit " + std::to_string(c.want_status));
        break;
      case program::self_kill: {
        static constexpr int sigs[] = {SIGTERM, SIGKILL, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM};
        c.want_status = -1;
        c.want_signal = one_of(sigs);
        sh(std::string("kill -s ") + shell_name_of(c.want_signal) + " $$");
        break;
      }
      case program::cat_echo: {
        const slot_kind in = c.plan[0];
        if (in != slot_kind::pipe_in && in != slot_kind::fd_in && in != slot_kind::duplex) {
          c.plan[0] = chance(0.7) ? slot_kind::pipe_in : slot_kind::fd_in;
        }
        need_output(1);
        if (chance(0.5)) {
          sh("cat");
        } else {
          o.file = "/bin/cat";
          o.args = {"cat"};
        }
        c.payload.resize(random_size(64 * 1024, 512 * 1024));
        for (char& ch : c.payload) ch = static_cast<char>(rng_() & 0xff);
        break;
      }
      case program::writer: {
        bool any = std::any_of(c.plan.begin(), c.plan.end(), child_can_write);
        if (!any) need_output(1);
        // head itself (found in PATH) writes to 1 only; sh can write to any descriptor.
        if (child_can_write(c.plan[1]) && chance(0.3)) {
          o.file = "head";
          const std::size_t n = random_size(64 * 1024, 2 * 1024 * 1024);
          o.args = {"head", "-c", std::to_string(n), "/dev/zero"};
          expect_written(c, 1, n);
        } else {
          std::string script;
          for (std::size_t i = 0; i < c.plan.size(); ++i) {
            if (!child_can_write(c.plan[i]) || chance(0.2)) continue;
            const std::size_t n = random_size(64 * 1024, 1024 * 1024);
            if (!script.empty()) script += "; ";
            script += "head -c " + std::to_string(n) + " /dev/zero >&" + std::to_string(i);
            expect_written(c, static_cast<int>(i), n);
          }
          if (script.empty()) script = "true";
          sh(script);
        }
        break;
      }
      case program::lister:
        need_output(1);
        c.use_ls = shared_.helper.empty() || chance(0.5);
        if (c.use_ls) {
          o.file = chance(0.5) ? "/bin/ls" : "ls";
          o.args = {"ls", "-1", "/proc/self/fd"};
        } else {
          o.file = shared_.helper;
          o.args = {"kin-test-child", "list-fds"};
        }
        break;
      case program::sleep_kill:
      case program::sleep_terminate:
        o.file = chance(0.5) ? "/bin/sleep" : "sleep";
        o.args = {"sleep", "5"};
        c.want_status = -1;
        if (c.prog == program::sleep_kill) {
          c.send_signal = one_of(lethal_signals);
          c.want_signal = c.send_signal;
        } else {
          c.kill_signal = one_of(lethal_signals);
          o.kill_signal = c.kill_signal;
          c.grace = std::chrono::milliseconds(pick(0, 100));
          c.want_signal = c.kill_signal;
        }
        break;
      case program::trap_terminate:
        need_output(1);
        sh("trap '' TERM; echo r; exec sleep 5");
        c.want_status = -1;
        // TERM is ignored (and stays so through exec): only the SIGKILL after the grace period
        // ends it. Any other kill_signal ends it at once.
        c.kill_signal = chance(0.7) ? SIGTERM : one_of(lethal_signals);
        o.kill_signal = c.kill_signal;
        c.want_signal = c.kill_signal == SIGTERM ? SIGKILL : c.kill_signal;
        c.grace = std::chrono::milliseconds(pick(0, 100));
        break;
      case program::race_kill:
        o.file = "/bin/true";
        o.args = {"true"};
        c.status_or_kill = true;
        break;
      case program::abandon:
        switch (pick(0, 2)) {
          case 0:
            o.file = "/bin/true";
            o.args = {"true"};
            break;
          case 1:
            o.file = "/bin/sleep";
            o.args = {"sleep", "0.05"};
            break;
          default:
            // Writes more than a pipe holds: with its pipe closed it dies by SIGPIPE (or
            // complains of a reset socket, on stderr, which must not be ours).
            need_output(1);
            if (c.plan[2] == slot_kind::inherit) c.plan[2] = slot_kind::ignore;
            o.file = "/usr/bin/head";
            o.args = {"head", "-c", "1000000", "/dev/zero"};
            break;
        }
        break;
      case program::missing_abs:
        o.file = "/nonexistent-kin-storm/program";
        o.args = {"program"};
        c.want_step = kin::spawn_step::exec;
        c.want_errno = ENOENT;
        c.want_path = o.file;
        break;
      case program::missing_path:
        o.file = "kin-storm-no-such-program";
        o.args = {"kin-storm-no-such-program"};
        c.want_step = kin::spawn_step::exec;
        c.want_errno = ENOENT;
        c.want_path = o.file;
        break;
      case program::bad_cwd:
        o.file = "/bin/true";
        o.args = {"true"};
        o.cwd = "/nonexistent-kin-storm/dir";
        c.want_step = kin::spawn_step::chdir;
        c.want_errno = ENOENT;
        c.want_path = o.cwd;
        break;
      case program::not_executable:
        o.file = shared_.not_executable;
        o.args = {"not-executable"};
        c.want_step = kin::spawn_step::exec;
        c.want_errno = EACCES;
        c.want_path = o.file;
        break;
      case program::directory:
        o.file = shared_.tmpdir;
        o.args = {"dir"};
        c.want_step = kin::spawn_step::exec;
        c.want_errno = EACCES;
        c.want_path = o.file;
        break;
      case program::no_shebang:
        o.file = shared_.no_shebang;
        o.args = {"no-shebang"};
        c.want_step = kin::spawn_step::exec;
        c.want_errno = ENOEXEC;
        c.want_path = o.file;
        break;
      case program::bad_file:
        o.file = "/bin/true";
        o.args = {"true"};
        c.want_step = kin::spawn_step::open;
        c.want_errno = ENOENT;
        c.want_path = "/nonexistent-kin-storm/file";
        break;
      case program::bad_option:
        o.file = "/bin/true";
        o.args = {"true"};
        c.want_step = kin::spawn_step::prepare;
        c.want_errno = EINVAL;
        c.want_path = o.file;
        break;
      case program::count:
        break;
    }
  }

  // Records that the writer puts `n` zero bytes on `slot`.
  void expect_written(child& c, int slot, std::size_t n) {
    if (c.plan[static_cast<std::size_t>(slot)] == slot_kind::file_out) {
      c.files.push_back({slot, {}, n});
    } else {
      c.zeros[slot] = n;
    }
  }

  // Fills o.stdio from c.plan (stdio::fd entries are filled in once their pipes exist).
  void build_plan(child& c, kin::spawn_options& o) {
    o.stdio.clear();
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      const slot_kind k = c.plan[i];
      switch (k) {
        case slot_kind::closed:
          o.stdio.push_back(kin::stdio::closed());
          break;
        case slot_kind::inherit:
          o.stdio.push_back(kin::stdio::inherit());
          break;
        case slot_kind::ignore:
          o.stdio.push_back(kin::stdio::ignore());
          break;
        case slot_kind::pipe_in:
          o.stdio.push_back(i == 0 && chance(0.5)
                                ? kin::stdio::pipe()
                                : kin::stdio::pipe(kin::stdio::direction::child_reads));
          break;
        case slot_kind::pipe_out:
          o.stdio.push_back(i != 0 && chance(0.5)
                                ? kin::stdio::pipe()
                                : kin::stdio::pipe(kin::stdio::direction::child_writes));
          break;
        case slot_kind::duplex:
          o.stdio.push_back(kin::stdio::pipe(kin::stdio::direction::duplex));
          break;
        case slot_kind::fd_in:
        case slot_kind::fd_out:
          o.stdio.push_back(kin::stdio::closed());  // replaced by stdio::fd before spawning
          break;
        case slot_kind::file_null:
          o.stdio.push_back(
              kin::stdio::file("/dev/null", O_RDONLY | (chance(0.5) ? O_CLOEXEC : 0)));
          break;
        case slot_kind::file_out: {
          const std::string path = shared_.tmpdir + "/t" + std::to_string(index_) + "-c" +
                                   std::to_string(c.id) + "-" + std::to_string(i);
          o.stdio.push_back(kin::stdio::file(path, O_WRONLY | O_CREAT | O_TRUNC, 0600));
          auto it = std::find_if(c.files.begin(), c.files.end(),
                                 [&](const out_file& f) { return f.slot == static_cast<int>(i); });
          if (it != c.files.end()) {
            it->path = path;
          } else {
            c.files.push_back({static_cast<int>(i), path, 0});
          }
          break;
        }
      }
    }
    if (c.prog == program::bad_file) {
      // On a descriptor number of its own, so that it is the only failing entry.
      const std::size_t at = static_cast<std::size_t>(pick(0, static_cast<int>(c.plan.size())));
      if (at < c.plan.size()) {
        std::erase_if(c.files, [&](const out_file& f) { return f.slot == static_cast<int>(at); });
        c.plan[at] = slot_kind::file_null;
        o.stdio[at] = kin::stdio::file(c.want_path, O_RDONLY);
      } else {
        c.plan.push_back(slot_kind::file_null);
        o.stdio.push_back(kin::stdio::file(c.want_path, O_RDONLY));
      }
    }
    if (c.prog == program::bad_option) {
      switch (pick(0, 3)) {
        case 0:
          o.args.clear();
          break;
        case 1:
          o.kill_signal = 0;
          break;
        case 2:
          o.kill_signal = 999;
          break;
        default: {
          const std::size_t at =
              static_cast<std::size_t>(pick(0, static_cast<int>(c.plan.size()) - 1));
          c.plan[at] = slot_kind::closed;
          o.stdio[at] = kin::stdio::fd(-1);
          break;
        }
      }
    }
  }

  std::string describe(const child& c, const kin::spawn_options& o) const {
    std::string d = "thread " + std::to_string(index_) + " child #" + std::to_string(c.id) + " [" +
                    name_of(c.prog) + "] " + o.file + " (";
    for (std::size_t i = 0; i < o.args.size(); ++i) d += (i ? " " : "") + o.args[i];
    d += ") plan";
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      d += " " + std::to_string(i) + ":" + name_of(c.plan[i]);
    }
    d += c.close_other_fds ? ", close_other_fds" : ", keep other fds";
    if (!o.cwd.empty()) d += ", cwd " + o.cwd;
    if (o.kill_signal != SIGTERM) d += ", kill_signal " + std::to_string(o.kill_signal);
    return d;
  }

  void violation(const child& c, const std::string& what) {
    violations.add(c.desc + (c.pid > 0 ? " pid " + std::to_string(c.pid) : std::string()) + ": " +
                   what);
  }

  void check_spawn_error(child& c, const kin::spawn_error& e,
                         std::map<int, std::pair<kin::unique_fd, kin::unique_fd>>& own_pipes) {
    const std::string got =
        std::string(kin::to_string(e.step)) + " " + code_text(e.code) + " \"" + e.path + "\"";
    ++counts_.errors[std::string(kin::to_string(e.step)) + " " + code_text(e.code)];
    if (e.step != c.want_step || e.code != std::error_code(c.want_errno, std::system_category()) ||
        e.path != c.want_path) {
      violation(c, "spawn error " + got + ", expected " + kin::to_string(c.want_step) + " " +
                       errno_text(c.want_errno) + " \"" + c.want_path + "\"");
    }
    const std::string m = e.message();
    if (m.find(kin::to_string(e.step)) == std::string::npos) {
      violation(c, "spawn error message does not name the step: " + m);
    }
    // The failed child was collected before spawn returned, so its copies of our pipes are
    // closed: our read ends see EOF (bounded, in case that ever became asynchronous).
    for (auto& [slot, ends] : own_pipes) {
      if (c.plan[static_cast<std::size_t>(slot)] != slot_kind::fd_out) continue;
      pollfd p{ends.first.get(), POLLIN, 0};
      const int n = ::poll(&p, 1, 1000);
      char b;
      if (n != 1 || ::read(ends.first.get(), &b, 1) != 0) {
        violation(c, "after the failed spawn our pipe at child fd " + std::to_string(slot) +
                         " has no EOF: someone still holds the child's end");
      }
    }
    remove_files(c);
    if (shared_.cfg.verbose) {
      std::fprintf(stderr, "thread %d: expected spawn error: %s\n", index_, e.message().c_str());
    }
  }

  void remove_files(child& c) {
    for (const out_file& f : c.files) {
      if (!f.path.empty()) ::unlink(f.path.c_str());
    }
    c.files.clear();
  }

  // ---- a running child ----
  void start_child(child& c, kin::process p,
                   std::map<int, std::pair<kin::unique_fd, kin::unique_fd>>& own_pipes) {
    ++inflight_;
    c.pid = p.pid();
    c.proc.emplace(std::move(p));
    child* cp = &c;
    c.proc->on_exit([this, cp](std::error_code ec, int st, int sig) { on_exit(*cp, ec, st, sig); });

    // The parent's ends.
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      const slot_kind k = c.plan[i];
      if (!parent_reads(k) && !parent_writes(k)) continue;
      auto ch = std::make_unique<channel>();
      ch->slot = static_cast<int>(i);
      ch->kind = k;
      if (kin_owns(k)) {
        ch->s = c.proc->stdio_stream(static_cast<int>(i));
        if (ch->s == nullptr) {
          violation(c, "no stream for the pipe at child fd " + std::to_string(i));
          continue;
        }
      } else {
        auto it = own_pipes.find(static_cast<int>(i));
        if (it == own_pipes.end()) continue;
        ch->own = std::make_unique<kin::stream>(*loop_);
        if (auto r = ch->own->open(std::move(it->second.first)); !r) {
          violation(c, "opening a stream on our pipe failed: " + code_text(r.error()));
          continue;
        }
        ch->s = ch->own.get();
      }
      c.channels.push_back(std::move(ch));
    }
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      if (kin_owns(c.plan[i]) == false && c.proc->stdio_stream(static_cast<int>(i)) != nullptr) {
        violation(c, "a stream at child fd " + std::to_string(i) + ", which is not a pipe");
      }
    }

    // What each readable end must deliver.
    for (auto& ch : c.channels) {
      if (!parent_reads(ch->kind)) continue;
      ch->expect = data_kind::nothing;
      if (auto it = c.zeros.find(ch->slot); it != c.zeros.end()) {
        ch->expect = data_kind::zeros;
        ch->want = it->second;
      } else if (ch->slot == 1 && c.prog == program::cat_echo) {
        ch->expect = data_kind::echo;
      } else if (ch->slot == 1 && c.prog == program::lister) {
        ch->expect = data_kind::listing;
      } else if (ch->slot == 1 && c.prog == program::trap_terminate) {
        ch->expect = data_kind::ready;
      }
    }

    if (c.prog == program::abandon) {
      abandon(c);
      return;
    }

    c.deadline = std::make_unique<kin::timer>(*loop_, [this, cp] { overdue(*cp); });
    (void)c.deadline->start(child_deadline);

    for (auto& ch : c.channels) {
      channel* chp = ch.get();
      if (parent_reads(ch->kind)) {
        ch->reading = true;
        auto r = ch->s->read_start(
            [this, cp, chp](std::error_code ec, std::span<const std::byte> data,
                            std::span<kin::unique_fd>) { on_data(*cp, *chp, ec, data); });
        if (!r) {
          ch->reading = false;
          ch->eof = true;
          violation(*cp, "read_start failed at child fd " + std::to_string(ch->slot) + ": " +
                             code_text(r.error()));
        }
      }
      if (parent_writes(ch->kind)) {
        if (c.prog == program::cat_echo && ch->slot == 0) {
          feed(c, *ch);
        } else if (ch->kind != slot_kind::duplex) {
          // The child does not read it: close it now, or leave it to the end.
          if (chance(0.5)) ch->s->close();
        }
      }
    }

    switch (c.prog) {
      case program::race_kill:
        kill_now(c, SIGKILL);
        break;
      case program::sleep_kill:
      case program::sleep_terminate:
        if (chance(0.2)) {
          act(c);
        } else {
          c.action = std::make_unique<kin::timer>(*loop_, [this, cp] { act(*cp); });
          (void)c.action->start(std::chrono::milliseconds(pick(0, 150)));
        }
        break;
      default:
        break;
    }
  }

  void feed(child& c, channel& ch) {
    ++c.pending_writes;
    child* cp = &c;
    ch.s->write(c.payload, [this, cp](std::error_code ec) {
      if (ec) violation(*cp, "writing the cat's input failed: " + code_text(ec));
      --cp->pending_writes;
      maybe_finish(*cp);
    });
    ++c.pending_writes;
    ch.s->shutdown([this, cp](std::error_code ec) {
      if (ec) violation(*cp, "shutting down the cat's input failed: " + code_text(ec));
      --cp->pending_writes;
      maybe_finish(*cp);
    });
  }

  void kill_now(child& c, int sig) {
    ++counts_.kills;
    auto r = c.proc->kill(sig);
    check_signal_result(c, r, "kill");
  }

  void check_signal_result(child& c, const kin::result<void>& r, const char* what) {
    if (c.exit_calls == 0 && !r) {
      violation(c, std::string(what) +
                       " failed before the child was reported exited: " + code_text(r.error()));
    } else if (c.exit_calls > 0 && (r || r.error() != std::errc::no_such_process)) {
      violation(c, std::string(what) + " of a reaped child did not fail with ESRCH");
    }
  }

  // The early kill of the sleep children, and the terminate of the trapping shell.
  void act(child& c) {
    if (c.done || c.exit_calls > 0 || !c.proc) return;
    if (c.prog == program::sleep_kill) {
      kill_now(c, c.send_signal);
    } else {
      ++counts_.terminates;
      auto r = c.proc->terminate(c.grace);
      check_signal_result(c, r, "terminate");
    }
  }

  void abandon(child& c) {
    ++counts_.abandoned;
    child* cp = &c;
    c.abandoned = true;
    // A pidfd of our own, opened before the loop can reap the child (so the pid is still its),
    // bounds it: the loop must reap it, but if it still runs at the deadline it is killed and
    // counted. The timer is unreferenced: kin's orphan alone must keep the loop running.
    c.pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0)));
    if (c.pidfd) {
      c.deadline = std::make_unique<kin::timer>(*loop_, [this, cp] {
        pollfd p{cp->pidfd.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) == 0) {
          violation(*cp, "the abandoned child still runs after " +
                             std::to_string(child_deadline.count()) + " s");
          (void)::syscall(SYS_pidfd_send_signal, cp->pidfd.get(), SIGKILL, nullptr, 0);
        }
        cp->pidfd.reset();
      });
      c.deadline->unref();
      (void)c.deadline->start(child_deadline);
    }
    c.proc->on_exit([this, cp](std::error_code, int, int) {
      if (cp->dropped) violation(*cp, "the exit callback ran after its process was destroyed");
    });
    auto drop = [this, cp] {
      cp->dropped = true;
      cp->proc.reset();
      cp->channels.clear();  // our own pipes, if any
      remove_files(*cp);
      cp->done = true;
      --inflight_;
      loop_->post([this] { top_up(); });
    };
    if (chance(0.5)) {
      drop();
    } else {
      c.action = std::make_unique<kin::timer>(*loop_, drop);
      (void)c.action->start(std::chrono::milliseconds(pick(0, 20)));
    }
  }

  void on_data(child& c, channel& ch, std::error_code ec, std::span<const std::byte> data) {
    if (ec) {
      if (ec != kin::errc::eof) ch.read_error = ec;
      ch.eof = true;
      ch.reading = false;
      maybe_finish(c);
      return;
    }
    const std::size_t at = ch.got;
    ch.got += data.size();
    switch (ch.expect) {
      case data_kind::nothing:
        // Kept (the start of it) to show in the violation: often a complaint on stderr.
        if (ch.text.size() < 200) {
          ch.text.append(reinterpret_cast<const char*>(data.data()),
                         std::min<std::size_t>(data.size(), 200 - ch.text.size()));
        }
        break;
      case data_kind::zeros:
        for (std::byte b : data) {
          if (b != std::byte{0}) ch.wrong_byte = true;
        }
        break;
      case data_kind::echo:
        if (at + data.size() > c.payload.size() ||
            std::memcmp(c.payload.data() + at, data.data(), data.size()) != 0) {
          ch.wrong_byte = true;
        }
        break;
      case data_kind::listing:
      case data_kind::ready:
        ch.text.append(reinterpret_cast<const char*>(data.data()), data.size());
        if (ch.expect == data_kind::ready && ch.text == "r\n" &&
            c.prog == program::trap_terminate && !c.action) {
          child* cp = &c;
          c.action = std::make_unique<kin::timer>(*loop_, [this, cp] { act(*cp); });
          (void)c.action->start(std::chrono::milliseconds(pick(0, 50)));
        }
        break;
    }
  }

  void on_exit(child& c, std::error_code ec, int st, int sig) {
    ++c.exit_calls;
    if (c.exit_calls > 1) {
      violation(c, "exit callback called " + std::to_string(c.exit_calls) + " times");
      return;
    }
    c.exit_ec = ec;
    c.status = st;
    c.signo = sig;
    if (ec) {
      violation(c, "exit callback with an error: " + code_text(ec));
    } else if (!((st >= 0 && sig == 0) || (st == -1 && sig > 0))) {
      violation(
          c, "inconsistent exit: status " + std::to_string(st) + ", signal " + std::to_string(sig));
    }
    if (!c.proc->has_exited() || c.proc->exit_status() != st || c.proc->term_signal() != sig) {
      violation(c, "process accessors disagree with the exit callback");
    }
    // Reaped: the pid may be anyone's now, and kin must refuse to signal it.
    auto k = c.proc->kill(SIGKILL);
    if (k || k.error() != std::errc::no_such_process) {
      violation(c, "kill after the exit callback did not fail with ESRCH");
    }
    if (c.action) c.action->stop();
    maybe_finish(c);
  }

  void maybe_finish(child& c) {
    if (c.done || c.exit_calls == 0 || c.pending_writes > 0) return;
    for (const auto& ch : c.channels) {
      if (ch->reading && !ch->eof) return;
    }
    finish(c);
  }

  // The deadline passed: kill what is left and give it reap_grace to be reaped.
  void overdue(child& c) {
    if (c.done) return;
    if (!c.overdue) {
      std::string state = c.exit_calls > 0 ? "exited" : "not reaped";
      for (const auto& ch : c.channels) {
        if (ch->reading && !ch->eof) {
          state += ", no EOF at child fd " + std::to_string(ch->slot);
        }
      }
      if (c.pending_writes > 0) state += ", writes pending";
      violation(c, "still running after " + std::to_string(child_deadline.count()) + " s (" +
                       state + ")");
      c.overdue = true;
      if (c.exit_calls == 0) (void)c.proc->kill(SIGKILL);
      (void)c.deadline->start(reap_grace);
      return;
    }
    violation(c, c.exit_calls == 0 ? "never reaped, even after SIGKILL"
                                   : "a pipe never reached EOF after the child was reaped");
    c.proc->unref();  // so that the loop can end; the zombie check reports it
    finish(c);
  }

  void finish(child& c) {
    c.done = true;
    --inflight_;
    ++counts_.finished;
    if (c.deadline) c.deadline->stop();
    if (c.action) c.action->stop();
    if (!c.overdue) check_outcome(c);
    child* cp = &c;
    // Release the pipes on a later iteration: this may run inside one of their callbacks.
    loop_->post([this, cp] {
      for (auto& ch : cp->channels) {
        if (ch->own) {
          ch->own.reset();
        } else if (ch->s != nullptr) {
          ch->s->close();
        }
      }
      cp->channels.clear();
      std::string().swap(cp->payload);  // assigning "" would keep the capacity
      cp->deadline.reset();
      cp->action.reset();
      remove_files(*cp);
      retire(*cp);
      top_up();
    });
  }

  // Keeps the last finished processes a while (a second exit callback would show), then
  // destroys them: an exited process lets go of its state at once.
  void retire(child& c) {
    retired_.push_back(&c);
    if (retired_.size() <= 256) return;
    child* old = retired_.front();
    retired_.pop_front();
    old->proc.reset();
  }

  void check_outcome(child& c) {
    if (c.exit_ec) return;  // already reported
    if (c.signo > 0) {
      ++counts_.signalled;
    } else {
      ++counts_.exited;
    }
    const bool ok = c.status_or_kill
                        ? ((c.status == 0 && c.signo == 0) || c.signo == SIGKILL)
                        : (c.want_signal > 0 ? c.signo == c.want_signal
                                             : c.signo == 0 && c.status == c.want_status);
    if (!ok) {
      violation(c, "ended with status " + std::to_string(c.status) + ", signal " +
                       std::to_string(c.signo) + "; expected " +
                       (c.want_signal > 0 ? "signal " + std::to_string(c.want_signal)
                                          : "status " + std::to_string(c.want_status)) +
                       (c.status_or_kill ? " or SIGKILL" : ""));
    }
    for (const auto& ch : c.channels) {
      if (!parent_reads(ch->kind)) continue;
      const std::string where = " at child fd " + std::to_string(ch->slot);
      if (ch->read_error) violation(c, "read error" + where + ": " + code_text(ch->read_error));
      counts_.bytes_checked += ch->got;
      switch (ch->expect) {
        case data_kind::nothing:
          if (ch->got != 0) {
            violation(c, std::to_string(ch->got) + " unexpected bytes" + where + ": \"" +
                             printable(ch->text) + "\"");
          }
          break;
        case data_kind::zeros:
          if (ch->got != ch->want || ch->wrong_byte) {
            violation(c, "got " + std::to_string(ch->got) + " bytes" +
                             (ch->wrong_byte ? " (not all zero)" : "") + where + ", expected " +
                             std::to_string(ch->want) + " zero bytes");
          }
          break;
        case data_kind::echo:
          if (ch->got != c.payload.size() || ch->wrong_byte) {
            violation(c, "cat echoed " + std::to_string(ch->got) + " bytes" +
                             (ch->wrong_byte ? " that differ" : "") + " of " +
                             std::to_string(c.payload.size()));
          }
          break;
        case data_kind::listing:
          check_listing(c, ch->text);
          break;
        case data_kind::ready:
          if (ch->text != "r\n") {
            violation(c, "the trapping shell wrote \"" + printable(ch->text) + "\"");
          }
          break;
      }
    }
    for (const out_file& f : c.files) {
      struct stat st {};
      if (::stat(f.path.c_str(), &st) != 0) {
        violation(c, "the file at child fd " + std::to_string(f.slot) + " was not created");
      } else if (static_cast<std::size_t>(st.st_size) != f.want) {
        violation(c, "the file at child fd " + std::to_string(f.slot) + " holds " +
                         std::to_string(st.st_size) + " bytes, expected " + std::to_string(f.want));
      } else {
        counts_.bytes_checked += f.want;
      }
    }
  }

  // The descriptors the lister saw must be exactly those of its plan; with close_other_fds off,
  // also those this process had without close-on-exec at the start (above the plan) and any
  // the rogue held; /bin/ls adds its own directory descriptor (the lowest free number).
  void check_listing(child& c, const std::string& text) {
    (c.close_other_fds ? counts_.listers_closing : counts_.listers_keeping) += 1;
    std::set<int> listed;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      const std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.empty()) continue;
      if (line.find_first_not_of("0123456789") != std::string::npos) {
        violation(c, "the lister wrote \"" + printable(line) + "\"");
        return;
      }
      listed.insert(std::atoi(line.c_str()));
    }
    std::set<int> expected;
    for (std::size_t i = 0; i < c.plan.size(); ++i) {
      if (c.plan[i] != slot_kind::closed) expected.insert(static_cast<int>(i));
    }
    if (!c.close_other_fds) {
      for (int fd : shared_.inheritable) {
        if (fd >= static_cast<int>(c.plan.size())) expected.insert(fd);
      }
    }
    std::set<int> missing;
    std::set<int> extra;
    std::set_difference(expected.begin(), expected.end(), listed.begin(), listed.end(),
                        std::inserter(missing, missing.end()));
    std::set_difference(listed.begin(), listed.end(), expected.begin(), expected.end(),
                        std::inserter(extra, extra.end()));
    // The lowest number not listed, but for `d`.
    auto lowest_free_without = [&](int d) {
      int n = 0;
      while (n != d && listed.count(n) != 0) ++n;
      return n;
    };
    auto acceptable = [&](const std::set<int>& rest) {
      for (int fd : rest) {
        if (c.close_other_fds || !shared_.rogue->may_be(fd)) return false;
      }
      return true;
    };
    bool ok = false;
    if (c.use_ls) {
      // Some extra number must be ls's own: the lowest free one when it opened the directory.
      for (int d : extra) {
        if (lowest_free_without(d) != d) continue;
        std::set<int> rest = extra;
        rest.erase(d);
        if (acceptable(rest)) {
          ok = true;
          break;
        }
      }
    } else {
      ok = acceptable(extra);
    }
    if (!missing.empty() || !ok) {
      std::string what = "the child saw descriptors " + join(listed) + ", expected " +
                         join(expected) + (c.use_ls ? " plus ls's own" : "");
      if (!missing.empty()) what += "; missing " + join(missing);
      if (!ok) what += "; not given " + join(extra);
      if (!ok) {
        for (int fd : extra)
          what += "; parent's fd " + std::to_string(fd) + " is now " + fd_target(fd);
      }
      violation(c, what);
    }
  }

  void check_end_of_thread() {
    int unfinished = 0;
    for (const auto& cp : children_) {
      const child& c = *cp;
      if (!c.done) ++unfinished;
      if (c.pid < 0 || c.abandoned) continue;
      if (c.exit_calls != 1) {
        violations.add(c.desc + " pid " + std::to_string(c.pid) + ": exit callback called " +
                       std::to_string(c.exit_calls) + " times by the end of the thread");
      }
    }
    if (unfinished > 0) {
      violations.add("thread " + std::to_string(index_) + ": " + std::to_string(unfinished) +
                     " children unfinished when its loop ended");
    }
    const auto left = children_of_this_thread();
    if (!left.empty()) {
      violations.add("thread " + std::to_string(index_) +
                     ": children left (zombies?) after its "
                     "loop ended: " +
                     join(left));
    }
    if (shared_.cfg.verbose) {
      std::fprintf(stderr, "thread %d: %llu children, done\n", index_,
                   static_cast<unsigned long long>(children_.size()));
    }
  }

  shared_state& shared_;
  int index_;
  tally& counts_;
  std::mt19937_64 rng_;
  std::discrete_distribution<int> programs_;
  kin::loop* loop_ = nullptr;
  std::deque<std::unique_ptr<child>> children_;
  std::deque<child*> retired_;
  std::uint64_t next_id_ = 0;
  int inflight_ = 0;
};

// ---- the churn thread -------------------------------------------------------------------------

// Creates and closes close-on-exec descriptors all the time, and now and then holds one that is
// not close-on-exec for a few milliseconds (at the lowest free number, or at a fixed high one).
void churn(shared_state& shared, std::atomic<bool>& stop, tally& counts) {
  std::mt19937_64 rng(shared.cfg.seed ^ 0x5bd1e995ULL);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::uint64_t round = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    {
      auto p = kin::make_pipe();
      auto s = kin::make_socketpair();
      kin::unique_fd d(::fcntl(2, F_DUPFD_CLOEXEC, 3));
      kin::unique_fd n(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      counts.churned_fds += 6;
    }
    if (++round % 16 == 0) {
      int fd = -1;
      shared.rogue->begin();
      if (shared.rogue_high >= 0 && pick(0, 3) == 0) {
        kin::unique_fd t(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (t) fd = ::dup2(t.get(), shared.rogue_high);  // the copy is not close-on-exec
      } else {
        fd = ::open("/dev/null", O_RDONLY);  // NOLINT: deliberately without O_CLOEXEC
      }
      shared.rogue->opened(fd);
      shared.rogue->end();
      if (fd >= 0) {
        ++counts.rogue_fds;
        std::this_thread::sleep_for(std::chrono::microseconds(pick(200, 3000)));
        ::close(fd);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(pick(50, 400)));
  }
}

// ---- main ---------------------------------------------------------------------------------------

constexpr const char* usage_line =
    "usage: kin-spawn-storm [--threads T (4)] [--seconds S (10)] [--seed N] "
    "[--max-inflight K (16)] [-v]\n";

void bad_usage(const std::string& why) {
  std::fprintf(stderr, "kin-spawn-storm: %s\n%s(--help explains)\n", why.c_str(), usage_line);
  std::exit(2);
}

void help() {
  std::printf(
      "%s"
      "\n"
      "Stress test of kin::spawn. T threads, each with its own kin::loop, keep up to K children\n"
      "in flight for S seconds: /bin/true and /bin/false, sh -c 'exit N', shells that kill\n"
      "themselves, cat fed through its stdin (the echo is compared), writers of known byte\n"
      "counts on pipes and files at descriptors 0-5, listers of /proc/self/fd (KIN_TEST_CHILD's\n"
      "list-fds when that is set, and /bin/ls), sleeps killed early with kill() or terminate(),\n"
      "processes destroyed while their child runs, and spawns that must fail (missing program,\n"
      "bad cwd, no execute permission, a directory, no shebang, a bad stdio file, bad options).\n"
      "Each child gets a random stdio plan (inherit, ignore, pipe, socketpair, closed, stdio::fd\n"
      "of a pipe end, stdio::file) and close_other_fds mostly on. Meanwhile another thread\n"
      "creates close-on-exec descriptors and now and then holds one that is not.\n"
      "\n"
      "Checked: every exit status, signal, byte count, echo and spawn error (step, errno, path);\n"
      "each exit callback called exactly once; kill() of a reaped child fails with ESRCH; each\n"
      "child sees exactly the descriptors it was given; no child is left (zombie or not); the\n"
      "process holds exactly the descriptors it held at the start. A child still running after\n"
      "%lld s is killed and counted as a violation.\n"
      "\n"
      "Prints a summary; exits 0 if nothing was violated, 1 otherwise, 2 on bad usage.\n"
      "\n"
      "  --threads T       spawning threads (4)\n"
      "  --seconds S       how long new children are started (10)\n"
      "  --seed N          seed of the random choices (default: random; printed)\n"
      "  --max-inflight K  children in flight per thread (16)\n"
      "  -v, --verbose     report each thread's end and each expected spawn error\n"
      "  -h, --help        this text\n",
      usage_line, static_cast<long long>(child_deadline.count()));
}

bool parse_number(const char* text, double& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtod(text, &end);
  return errno == 0 && end != text && *end == '\0';
}

// A private temporary directory with the programs that must fail to run.
bool make_fixtures(shared_state& s) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/kin-spawn-storm-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) return false;
  s.tmpdir = pattern;
  s.not_executable = s.tmpdir + "/not-executable";
  s.no_shebang = s.tmpdir + "/no-shebang";
  auto write_file = [](const std::string& path, const char* text, mode_t mode) {
    kin::unique_fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) return false;
    const std::size_t n = std::strlen(text);
    return ::write(fd.get(), text, n) == static_cast<ssize_t>(n) && ::fchmod(fd.get(), mode) == 0;
  };
  return write_file(s.not_executable, "#!/bin/sh\nexit 0\n", 0644) &&
         write_file(s.no_shebang, "this is not a program\n", 0755);
}

void remove_fixtures(const shared_state& s) {
  ::unlink(s.not_executable.c_str());
  ::unlink(s.no_shebang.c_str());
  // Anything else left there is a file a child was given and we failed to remove.
  if (DIR* d = ::opendir(s.tmpdir.c_str())) {
    std::vector<std::string> left;
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        left.emplace_back(e->d_name);
      }
    }
    ::closedir(d);
    for (const auto& name : left) ::unlink((s.tmpdir + "/" + name).c_str());
  }
  ::rmdir(s.tmpdir.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool seed_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&](double& out) {
      if (i + 1 >= argc || !parse_number(argv[i + 1], out)) {
        bad_usage(std::string(argv[i]) + " needs a number");
      }
      ++i;
    };
    auto whole = [&](int& out) {
      double d = 0;
      value(d);
      if (d != static_cast<double>(static_cast<int>(d))) {
        bad_usage(std::string(argv[i - 1]) + " needs a whole number");
      }
      out = static_cast<int>(d);
    };
    double v = 0;
    if (a == "-h" || a == "--help") {
      help();
      return 0;
    } else if (a == "-v" || a == "--verbose") {
      cfg.verbose = true;
    } else if (a == "--threads") {
      whole(cfg.threads);
    } else if (a == "--seconds") {
      value(v);
      cfg.seconds = v;
    } else if (a == "--max-inflight") {
      whole(cfg.max_inflight);
    } else if (a == "--seed") {
      char* end = nullptr;
      errno = 0;
      if (i + 1 < argc) cfg.seed = std::strtoull(argv[i + 1], &end, 0);
      if (i + 1 >= argc || *end != '\0' || end == argv[i + 1] || errno != 0) {
        bad_usage("--seed needs a number");
      }
      ++i;
      seed_given = true;
    } else {
      bad_usage("unknown argument " + std::string(a));
    }
  }
  if (cfg.threads < 1 || cfg.threads > 256 || cfg.max_inflight < 1 || cfg.max_inflight > 1024 ||
      !(cfg.seconds >= 0) || cfg.seconds > 86400) {
    bad_usage("--threads takes 1-256, --max-inflight 1-1024, --seconds 0-86400");
  }
  if (!seed_given)
    cfg.seed = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();

  // 0-2 must be open: children inherit them, and nothing else may land there.
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1) ::open("/dev/null", O_RDWR);  // lands on `fd`
  }
  // Room for every pipe in flight, and a high number for the rogue descriptor.
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t want = 16384;
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want) {
    lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  ::getrlimit(RLIMIT_NOFILE, &lim);
  const long soft = lim.rlim_cur == RLIM_INFINITY ? 1 << 20 : static_cast<long>(lim.rlim_cur);
  const long needed = static_cast<long>(cfg.threads) * cfg.max_inflight * 16 + 256;

  shared_state shared;
  shared.cfg = cfg;
  if (const char* h = std::getenv("KIN_TEST_CHILD"); h != nullptr && ::access(h, X_OK) == 0) {
    shared.helper = h;
  }
  if (!make_fixtures(shared)) {
    std::fprintf(stderr, "kin-spawn-storm: cannot create the temporary directory: %s\n",
                 std::strerror(errno));
    return 2;
  }
  const int rogue_limit = static_cast<int>(std::min<long>(soft, 1 << 16));
  shared.rogue = std::make_unique<rogue_registry>(rogue_limit);
  if (soft >= 4096 && needed < 4095 - 256) {
    shared.rogue_high = 4095;  // no other descriptor gets that high
    shared.rogue->opened(shared.rogue_high);
  }

  // Dispositions and a mask the children must not inherit.
  std::signal(SIGHUP, SIG_IGN);
  std::signal(SIGUSR1, SIG_IGN);
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &blocked, nullptr);

  const std::set<int> fds_before = open_fds();
  const std::set<int> children_before = all_children();
  for (int fd : fds_before) {
    const int flags = ::fcntl(fd, F_GETFD);
    if (fd > 2 && flags != -1 && (flags & FD_CLOEXEC) == 0) shared.inheritable.insert(fd);
  }

  std::printf("kin-spawn-storm: seed %llu, %d threads, %g s, %d in flight per thread%s\n",
              static_cast<unsigned long long>(cfg.seed), cfg.threads, cfg.seconds, cfg.max_inflight,
              shared.helper.empty() ? ", listers: ls" : ", listers: helper + ls");
  std::fflush(stdout);

  const auto start = clock_type::now();
  shared.end = start + std::chrono::duration_cast<clock_type::duration>(
                           std::chrono::duration<double>(cfg.seconds));
  std::vector<tally> counts(static_cast<std::size_t>(cfg.threads) + 1);
  std::mutex m;
  std::condition_variable cv;
  int finished = 0;
  std::atomic<bool> stop_churn{false};
  std::thread churner(churn, std::ref(shared), std::ref(stop_churn),
                      std::ref(counts[static_cast<std::size_t>(cfg.threads)]));
  std::vector<std::thread> workers;
  for (int t = 0; t < cfg.threads; ++t) {
    workers.emplace_back([&, t] {
      try {
        worker w(shared, t, counts[static_cast<std::size_t>(t)]);
        w.run();
      } catch (const std::exception& e) {
        violations.add("thread " + std::to_string(t) + " failed: " + e.what());
      }
      std::lock_guard<std::mutex> lock(m);
      ++finished;
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(m);
    if (!cv.wait_until(lock, shared.end + stuck_after, [&] { return finished == cfg.threads; })) {
      std::fprintf(
          stderr, "VIOLATION: %d of %d threads still running %lld s after the end: stuck\n",
          cfg.threads - finished, cfg.threads, static_cast<long long>(stuck_after.count()));
      std::fprintf(stderr, "kin-spawn-storm: FAILED (stuck), children now: %s\n",
                   join(all_children()).c_str());
      std::fflush(stderr);
      remove_fixtures(shared);
      std::_Exit(1);
    }
  }
  for (auto& w : workers) w.join();
  stop_churn = true;
  churner.join();
  const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();

  // The whole run: no child left, no descriptor more or less than at the start.
  const std::set<int> children_after = all_children();
  if (children_after != children_before) {
    violations.add("children left at the end (zombies?): " + join(children_after) +
                   ", at the start " + join(children_before));
  }
  const std::set<int> fds_after = open_fds();
  if (fds_after != fds_before) {
    std::string what =
        "descriptors at the end " + join(fds_after) + ", at the start " + join(fds_before);
    for (int fd : fds_after) {
      if (fds_before.count(fd) == 0) what += "; " + std::to_string(fd) + " -> " + fd_target(fd);
    }
    violations.add(what);
  }
  remove_fixtures(shared);

  tally total;
  for (const auto& c : counts) total.add(c);
  std::uint64_t spawned = 0;
  for (auto n : total.spawned) spawned += n;
  std::printf("spawned %llu children in %.1f s (%.0f/s)\n",
              static_cast<unsigned long long>(spawned), elapsed,
              elapsed > 0 ? static_cast<double>(spawned) / elapsed : 0.0);
  std::printf("  by kind:");
  for (std::size_t i = 0; i < program_count; ++i) {
    std::printf(" %s %llu%s", name_of(static_cast<program>(i)),
                static_cast<unsigned long long>(total.spawned[i]),
                i + 1 < program_count ? "," : "");
  }
  std::printf(
      "\n  reaped and checked %llu: %llu exited, %llu by a signal; %llu abandoned to the "
      "loop\n",
      static_cast<unsigned long long>(total.finished),
      static_cast<unsigned long long>(total.exited),
      static_cast<unsigned long long>(total.signalled),
      static_cast<unsigned long long>(total.abandoned));
  std::printf("  kills %llu, terminates %llu; bytes checked %llu\n",
              static_cast<unsigned long long>(total.kills),
              static_cast<unsigned long long>(total.terminates),
              static_cast<unsigned long long>(total.bytes_checked));
  std::printf(
      "  descriptor listings %llu with close_other_fds, %llu without; rogue descriptors "
      "%llu, close-on-exec ones churned %llu\n",
      static_cast<unsigned long long>(total.listers_closing),
      static_cast<unsigned long long>(total.listers_keeping),
      static_cast<unsigned long long>(total.rogue_fds),
      static_cast<unsigned long long>(total.churned_fds));
  std::printf("  spawn errors by step:");
  if (total.errors.empty()) std::printf(" none");
  bool first = true;
  for (const auto& [what, n] : total.errors) {
    std::printf("%s %s %llu", first ? "" : ",", what.c_str(), static_cast<unsigned long long>(n));
    first = false;
  }
  const int bad = violations.count();
  std::printf("\nviolations: %d\n%s\n", bad,
              bad == 0 ? "kin-spawn-storm: OK" : "kin-spawn-storm: FAILED");
  return bad == 0 ? 0 : 1;
}
