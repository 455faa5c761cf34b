// kin::spawn and kin::process: the parent's side of starting a child (the plan, the PATH
// search, the report pipe) and the per-loop reaper that collects only kin's own children.
#include <kin/process.hpp>

#include "assert.hpp"
#include "async_safe/child_plan.hpp"
#include "environment_lock.hpp"
#include "loop_impl.hpp"
#include "posix/sys.hpp"
#include "process_access.hpp"
#include "spawn_backend.hpp"
#include "stream_opener.hpp"

#include <kin/signal.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace kin {

const char* to_string(spawn_step step) noexcept {
  switch (step) {
    case spawn_step::prepare:
      return "prepare";
    case spawn_step::fork:
      return "fork";
    case spawn_step::setsid:
      return "setsid";
    case spawn_step::setpgid:
      return "setpgid";
    case spawn_step::setgroups:
      return "setgroups";
    case spawn_step::setgid:
      return "setgid";
    case spawn_step::setuid:
      return "setuid";
    case spawn_step::parent_death:
      return "parent_death";
    case spawn_step::chdir:
      return "chdir";
    case spawn_step::open:
      return "open";
    case spawn_step::dup2:
      return "dup2";
    case spawn_step::exec:
      return "exec";
  }
  return "?";
}

std::string spawn_error::message() const {
  return fmt::format("spawn \"{}\": {} failed: {}", path, to_string(step), code.message());
}

namespace detail {

namespace {

using async_safe::child_step;

spawn_step step_of(int reported) noexcept {
  switch (static_cast<child_step>(reported)) {
    case child_step::setsid:
      return spawn_step::setsid;
    case child_step::setpgid:
      return spawn_step::setpgid;
    case child_step::setgroups:
      return spawn_step::setgroups;
    case child_step::setgid:
      return spawn_step::setgid;
    case child_step::setuid:
      return spawn_step::setuid;
    case child_step::parent_death:
      return spawn_step::parent_death;
    case child_step::chdir:
      return spawn_step::chdir;
    case child_step::open:
      return spawn_step::open;
    case child_step::dup2:
      return spawn_step::dup2;
    case child_step::exec:
      return spawn_step::exec;
  }
  return spawn_step::exec;
}

bool valid_signal(int sig) noexcept { return sig > 0 && sig < NSIG; }

// Waits for a child that has ended or is ending and collects it, so that it never stays a
// zombie.
void collect(pid_t pid) noexcept {
  int ignored = 0;
  (void)sys::retry([&] { return ::waitpid(pid, &ignored, 0); });
}

// Kills a child that kin cannot watch and collects it (it has not been reaped, so its pid is
// still its own).
void kill_and_collect(pid_t pid) noexcept {
  (void)::kill(pid, SIGKILL);
  collect(pid);
}

// From this many children alive in a loop on, new pidfds move out of the low descriptor range.
constexpr std::size_t many_children = 64;

}  // namespace

class reaper;

// A child and everything the parent keeps for it. A handle: active (keeping the loop alive
// unless unref'd) while the child is not yet reaped.
struct process_state : handle {
  process_state(loop& l, reaper& r) : handle(l), owner(r), kill_timer(l.impl(), {}) {
    kill_timer.unref();
  }
  ~process_state();

  void set_running(bool on) noexcept { set_active(on); }

  reaper& owner;
  pid_t pid = -1;
  unique_fd pidfd;
  std::unique_ptr<io_watcher> pidfd_watch;
  bool exited = false;
  bool orphan = false;
  bool killed = false;  // kill() or terminate() delivered a signal (Node's subprocess.killed)
  int status = -1;
  int signo = 0;
  std::error_code error;
  int kill_signal = SIGTERM;
  process::exit_callback exit_cb;
  // kin's own watcher of the exit (exec's collector): called before exit_cb, and even after the
  // process object was destroyed.
  process::exit_callback observer;
  timer kill_timer;
  std::vector<std::unique_ptr<stream>> streams;  // by child descriptor number
};

// The loop's collector of children. With a pidfd per child (Linux 5.3+), a child is looked at
// when its pidfd becomes readable; children without one are all looked at on every SIGCHLD.
// Looking at a child is waitpid(pid, WNOHANG) of its own pid, never waitpid(-1): other code's
// children are theirs to collect. Exits are handled in a deferred task, not in the pidfd or
// signal watcher's callback, so an exit callback may destroy any process (and its watcher).
class reaper : public loop_impl::extension {
 public:
  // Holds the loop's implementation, not the kin::loop, which may be moved (and whose pointer
  // to the implementation may already be gone while the implementation destroys this).
  explicit reaper(loop_impl& l) : loop_(l), reap_task_(&reaper::deferred_reap, this) {}
  ~reaper() override {
    loop_.cancel(reap_task_);
    // Orphans whose children still run are forgotten with the loop: nothing can collect them
    // any more (documented on kin::process).
    orphans_.clear();
  }

  static reaper& of(loop& l) {
    auto& ext = l.impl().process_extension();
    if (!ext) ext = std::make_unique<reaper>(l.impl());
    return static_cast<reaper&>(*ext);
  }

  loop_impl& owner_loop() noexcept { return loop_; }

  // Starts watching a child: its pidfd if it has one, else SIGCHLD. Either way it is looked at
  // once at once, in case it ended before the watch began.
  result<void> add(process_state& p) {
    if (p.pidfd.is_open()) {
      const pid_t pid = p.pid;
      p.pidfd_watch =
          std::make_unique<io_watcher>(loop_, p.pidfd.get(), [this, pid](io_events) { due(pid); });
      p.pidfd_watch->unref();
      if (!p.pidfd_watch->start(io_events::readable)) {
        p.pidfd_watch.reset();
        p.pidfd.reset();
      }
    }
    if (!p.pidfd.is_open()) {
      if (!sigchld_) {
        sigchld_ = std::make_unique<signal_watcher>(loop_, [this](int) { sigchld(); });
        if (auto r = sigchld_->start(SIGCHLD); !r) {
          sigchld_.reset();
          return r;
        }
        sigchld_->unref();
      }
      swept_.insert(p.pid);
    }
    // A pid still listed belongs to a child someone else reaped (ECHILD) and the kernel has
    // given the number to this new one: the old one's status is lost, and the next reap by that
    // pid must not take this child's.
    if (auto old = live_.find(p.pid); old != live_.end()) {
      stale_.push_back(old->second);
      live_.erase(old);
    }
    live_.emplace(p.pid, &p);
    due(p.pid);
    return {};
  }

  [[nodiscard]] std::size_t live_count() const noexcept { return live_.size(); }

  void remove(process_state& p) noexcept {
    auto it = live_.find(p.pid);
    if (it == live_.end() || it->second != &p) {
      std::erase(stale_, &p);  // not (or no longer) the owner of its pid
      return;
    }
    live_.erase(it);
    swept_.erase(p.pid);
  }

  void adopt(std::unique_ptr<process_state> p) {
    process_state* raw = p.get();
    orphans_.emplace(raw, std::move(p));
  }

 private:
  static void deferred_reap(void* self) noexcept { static_cast<reaper*>(self)->reap_due(); }

  void due(pid_t pid) {
    due_.push_back(pid);
    loop_.defer(reap_task_);
  }

  void sigchld() {
    for (pid_t pid : swept_) due_.push_back(pid);
    loop_.defer(reap_task_);
  }

  void reap_due() noexcept {
    while (!stale_.empty()) {
      process_state* p = stale_.back();
      stale_.pop_back();
      finish(*p, make_error_code(errc::status_unknown), -1, 0);
    }
    std::vector<pid_t> due;
    due.swap(due_);
    for (pid_t pid : due) {
      // A callback run for an earlier pid may have destroyed this one's process (then it is
      // an orphan, still in live_) or spawned new children.
      auto it = live_.find(pid);
      if (it != live_.end()) reap(*it->second);
    }
  }

  void reap(process_state& p) noexcept {
    int wstatus = 0;
    const pid_t r = sys::retry([&] { return ::waitpid(p.pid, &wstatus, WNOHANG); });
    if (r == 0) return;  // still running: a wakeup for another child, or for nothing
    if (r < 0) {
      // ECHILD: someone else collected it (a waitpid(-1) elsewhere in the process). Its status
      // is gone; never report it as a success.
      finish(p, make_error_code(errc::status_unknown), -1, 0);
    } else if (WIFEXITED(wstatus)) {
      finish(p, {}, WEXITSTATUS(wstatus), 0);
    } else if (WIFSIGNALED(wstatus)) {
      finish(p, {}, -1, WTERMSIG(wstatus));
    }
    // Stopped or continued: not asked for (no WUNTRACED), so never here.
  }

  void finish(process_state& p, std::error_code ec, int st, int sig) noexcept {
    remove(p);
    p.exited = true;
    p.error = ec;
    p.status = st;
    p.signo = sig;
    p.kill_timer.stop();
    p.pidfd_watch.reset();
    p.pidfd.reset();
    p.set_running(false);
    process::exit_callback observer = std::move(p.observer);
    p.observer = nullptr;
    if (p.orphan) {
      // The observer may look at the state (was_killed) before it goes.
      if (observer) observer(ec, st, sig);
      orphans_.erase(&p);  // destroys it
      return;
    }
    // Last: the callbacks may destroy the process, and the state with it.
    process::exit_callback cb = std::move(p.exit_cb);
    p.exit_cb = nullptr;
    if (observer) observer(ec, st, sig);
    if (cb) cb(ec, st, sig);
  }

  loop_impl& loop_;
  deferred_task reap_task_;
  std::unique_ptr<signal_watcher> sigchld_;
  std::unordered_map<pid_t, process_state*> live_;  // every child not yet collected
  std::unordered_set<pid_t> swept_;                 // those without a pidfd
  std::vector<pid_t> due_;
  std::vector<process_state*> stale_;  // found reaped by someone else when their pid came back
  std::unordered_map<process_state*, std::unique_ptr<process_state>> orphans_;
};

process_state::~process_state() {
  pidfd_watch.reset();
  owner.remove(*this);
  set_active(false);
}

namespace {

// What spawn() builds before the child exists; it outlives the child's use of it (the child
// execs or exits before start_child returns).
struct prepared {
  bool own_env = false;  // envp is env_storage (else the parent's environ)
  std::vector<std::string> env_storage;
  std::vector<char*> envp;
  std::size_t pid_slot_entry = SIZE_MAX;  // env_storage entry the child writes its pid in
  std::vector<char*> argv;
  std::vector<std::string> candidates;
  std::vector<const char*> candidate_ptrs;
  std::vector<async_safe::fd_action> actions;
  std::vector<int> scratch;
  // Child ends (closed once the child has its copies) and parent ends (opened as streams).
  std::vector<unique_fd> child_ends;
  struct parent_end {
    parent_end(int n, fd_kind k, unique_fd f) : child_fd(n), kind(k), fd(std::move(f)) {}
    int child_fd;
    fd_kind kind;
    unique_fd fd;
  };
  std::vector<parent_end> parent_ends;
  std::string dev_null = "/dev/null";
};

bool env_name_is(const std::string& entry, std::string_view name) {
  return entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 &&
         entry[name.size()] == '=';
}

// The child's environment: the parent's own when the options change nothing (no copy on the
// common path), else a copy with the changes. A variable set by `env` keeps the place it had
// (as Node's {...process.env, NAME: value} does); a new one is added at the end.
char* const* build_env(const spawn_options& o, prepared& p) {
  // A child that opens files before exec may wait there for long (a FIFO without a writer):
  // it gets a copy, so that the environment lock is not held meanwhile (see spawn()).
  const bool opens_files = std::any_of(
      o.stdio.begin(), o.stdio.end(), [](const stdio& s) { return s.what() == stdio::kind::file; });
  if (!o.clear_env && o.env.empty() && o.env_unset.empty() && o.pid_variable.empty() &&
      !opens_files) {
    return environ;
  }
  p.own_env = true;
  if (!o.clear_env) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) p.env_storage.emplace_back(*e);
  }
  for (const std::string& name : o.env_unset) {
    std::erase_if(p.env_storage, [&](const std::string& s) { return env_name_is(s, name); });
  }
  for (const auto& entry : o.env) {
    const std::string& name = entry.first;
    const std::string& value = entry.second;
    auto same = [&](const std::string& s) { return env_name_is(s, name); };
    auto it = std::find_if(p.env_storage.begin(), p.env_storage.end(), same);
    if (it == p.env_storage.end()) {
      p.env_storage.push_back(name + "=" + value);
      continue;
    }
    *it = name + "=" + value;
    // Duplicates (possible in environ) would let the child's getenv find an older value.
    p.env_storage.erase(std::remove_if(std::next(it), p.env_storage.end(), same),
                        p.env_storage.end());
  }
  if (!o.pid_variable.empty()) {
    const std::string& name = o.pid_variable;
    std::erase_if(p.env_storage, [&](const std::string& s) { return env_name_is(s, name); });
    // The child writes its pid over the zeros: room for any pid_t, and its NUL.
    p.env_storage.push_back(name + "=" + std::string(21, '0'));
    p.pid_slot_entry = p.env_storage.size() - 1;
  }
  for (std::string& s : p.env_storage) p.envp.push_back(s.data());
  p.envp.push_back(nullptr);
  return p.envp.data();
}

// The PATH the child's program is looked up in: the child's own, else the system default,
// never the parent's when the child's environment has none (as Python's subprocess and libuv
// do: the program is the one the child's environment names).
std::string search_path(const prepared& p) {
  if (!p.own_env) {
    if (const char* parent = ::getenv("PATH")) return parent;
  } else {
    for (const std::string& s : p.env_storage) {
      if (env_name_is(s, "PATH")) return s.substr(5);
    }
  }
  const std::size_t n = ::confstr(_CS_PATH, nullptr, 0);
  std::string def(n, '\0');
  if (n > 0) {
    ::confstr(_CS_PATH, def.data(), n);
    def.resize(n - 1);
  }
  return def.empty() ? std::string("/bin:/usr/bin") : def;
}

void build_candidates(const spawn_options& o, prepared& p) {
  if (o.file.find('/') != std::string::npos) {
    p.candidates.push_back(o.file);
  } else {
    const std::string path = search_path(p);
    std::size_t start = 0;
    while (true) {
      const std::size_t end = path.find(':', start);
      std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
      // An empty entry is the current directory (the child's, after its chdir).
      p.candidates.push_back(dir.empty() ? o.file : dir + "/" + o.file);
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  for (const std::string& c : p.candidates) p.candidate_ptrs.push_back(c.c_str());
}

spawn_error prepare_error(std::error_code ec, const std::string& path) {
  return spawn_error{spawn_step::prepare, ec, path};
}

// Turns the stdio entries into fd actions, creating the pipes.
result<void> build_stdio(const spawn_options& o, prepared& p) {
  using async_safe::fd_action;
  const int count = static_cast<int>(o.stdio.size());
  for (int i = 0; i < count; ++i) {
    const stdio& s = o.stdio[static_cast<std::size_t>(i)];
    fd_action a{fd_action::kind::close, i, -1, nullptr, 0, 0};
    switch (s.what()) {
      case stdio::kind::closed:
        break;
      case stdio::kind::inherit:
        // The parent's descriptor with this number, close-on-exec or not; none: closed.
        if (::fcntl(i, F_GETFD) != -1) {
          a.what = fd_action::kind::dup;
          a.source = i;
        }
        break;
      case stdio::kind::ignore:
        a.what = fd_action::kind::open;
        a.path = p.dev_null.c_str();
        a.flags = O_RDWR;
        break;
      case stdio::kind::fd:
        if (s.parent_fd() < 0) return fail(errno_code(EINVAL));
        if (::fcntl(s.parent_fd(), F_GETFD) == -1) return fail(sys::last_error());
        a.what = fd_action::kind::dup;
        a.source = s.parent_fd();
        break;
      case stdio::kind::file:
        a.what = fd_action::kind::open;
        a.path = s.path().c_str();
        a.flags = s.flags() & ~O_CLOEXEC;
        a.mode = s.mode();
        break;
      case stdio::kind::pipe: {
        stdio::direction d = s.pipe_direction();
        if (d == stdio::direction::automatic) {
          d = i == 0 ? stdio::direction::child_reads : stdio::direction::child_writes;
        }
        unique_fd parent_end;
        unique_fd child_end;
        if (d == stdio::direction::duplex) {
          auto sp = make_socketpair();
          if (!sp) return fail(sp.error());
          parent_end = std::move(sp->first);
          child_end = std::move(sp->second);
        } else {
          auto pe = make_pipe();
          if (!pe) return fail(pe.error());
          const bool child_reads = d == stdio::direction::child_reads;
          parent_end = std::move(child_reads ? pe->write : pe->read);
          child_end = std::move(child_reads ? pe->read : pe->write);
        }
        // The parent's end is non-blocking (the child's stays blocking: the flag belongs to
        // the open file description, which dup2 shares).
        if (::fcntl(parent_end.get(), F_SETFL, O_NONBLOCK) != 0) return fail(sys::last_error());
        a.what = fd_action::kind::dup;
        a.source = child_end.get();
        p.child_ends.push_back(std::move(child_end));
        p.parent_ends.emplace_back(
            i, d == stdio::direction::duplex ? fd_kind::unix_stream_socket : fd_kind::pipe,
            std::move(parent_end));
        break;
      }
    }
    p.actions.push_back(a);
  }
  p.scratch.assign(p.actions.size(), -1);
  return {};
}

// The bound of the child's last-resort close loop (no close_range, no /proc): the descriptor
// limit as it was at the first spawn (a getrlimit per spawn is not worth that rare case).
int descriptor_limit() noexcept {
  static const int limit = [] {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return 1 << 20;
    return static_cast<int>(std::min<rlim_t>(lim.rlim_cur, 1 << 20));
  }();
  return limit;
}

// True when a path the child opens (the program, its candidates, cwd, a stdio file) names a
// descriptor of the parent (/proc/self/fd/N, /dev/fd/N): the child must then see the parent's
// whole table, not only the part below the plan's descriptors (see child_plan::unshare_below).
bool names_descriptors(const spawn_options& o, const prepared& p) {
  auto through_fd = [](std::string_view path) {
    return path.starts_with("/proc/self/fd/") || path.starts_with("/proc/thread-self/fd/") ||
           path.starts_with("/dev/fd/");
  };
  if (through_fd(o.cwd)) return true;
  for (const std::string& c : p.candidates) {
    if (through_fd(c)) return true;
  }
  for (const stdio& s : o.stdio) {
    if (s.what() == stdio::kind::file && through_fd(s.path())) return true;
  }
  return false;
}

// SIGCHLD set to SIG_IGN, or SA_NOCLDWAIT, makes the kernel reap children itself: waitpid would
// then fail with ECHILD for every child, so refuse before starting one.
bool sigchld_ignored() noexcept {
  struct sigaction sa {};
  if (::sigaction(SIGCHLD, nullptr, &sa) != 0) return false;
  return sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT) != 0;
}

}  // namespace

process_state& process_access::state(process& p) noexcept { return *p.state_; }

std::vector<std::unique_ptr<stream>> take_streams(process_state& p) noexcept {
  return std::exchange(p.streams, {});
}

void observe_exit(process_state& p, process::exit_callback cb) { p.observer = std::move(cb); }

bool has_exited(const process_state& p) noexcept { return p.exited; }

bool was_killed(const process_state& p) noexcept { return p.killed; }

loop_impl& loop_of(const process_state& p) noexcept { return p.owner.owner_loop(); }

result<void> signal_child(process_state& p, int sig) noexcept {
  if (p.exited) return fail(errno_code(ESRCH));
  if (sig < 0 || sig >= NSIG) return fail(errno_code(EINVAL));
  auto r = spawn_backend::signal_child(p.pid, p.pidfd.get(), sig);
  if (r && sig != 0) p.killed = true;
  return r;
}

}  // namespace detail

process::process(std::unique_ptr<detail::process_state> state) noexcept
    : state_(std::move(state)) {}
process::process(process&&) noexcept = default;
process& process::operator=(process&& other) noexcept {
  if (this != &other) {
    let_go();
    state_ = std::move(other.state_);
  }
  return *this;
}

process::~process() { let_go(); }

void process::let_go() noexcept {
  if (!state_) return;
  detail::process_state& s = *state_;
  s.exit_cb = nullptr;
  s.kill_timer.stop();
  s.streams.clear();  // the parent's pipe ends go with the process
  if (s.exited) {
    state_.reset();
    return;
  }
  // The loop goes on collecting the child, so that it never stays a zombie.
  s.orphan = true;
  s.owner.adopt(std::move(state_));
}

pid_t process::pid() const noexcept { return state_ ? state_->pid : -1; }
bool process::has_exited() const noexcept { return state_ && state_->exited; }
int process::exit_status() const noexcept { return state_ ? state_->status : -1; }
int process::term_signal() const noexcept { return state_ ? state_->signo : 0; }

void process::on_exit(exit_callback cb) {
  KIN_ASSERT(state_ != nullptr, "kin::process::on_exit on a moved-from process");
  detail::process_state& s = *state_;
  if (!s.exited) {
    s.exit_cb = std::move(cb);
    return;
  }
  if (cb) {
    s.owner.owner_loop().post(
        [cb = std::move(cb), ec = s.error, st = s.status, sig = s.signo] { cb(ec, st, sig); });
  }
}

result<void> process::kill(int sig) noexcept {
  if (!state_) return fail(errno_code(ESRCH));
  return detail::signal_child(*state_, sig);
}

result<void> process::kill_group(int sig) noexcept {
  if (!state_ || state_->exited) return fail(errno_code(ESRCH));
  if (sig < 0 || sig >= NSIG) return fail(errno_code(EINVAL));
  if (::kill(-state_->pid, sig) != 0) return fail(sys::last_error());
  return {};
}

result<void> process::terminate(std::chrono::milliseconds grace) noexcept {
  if (auto r = kill(state_ ? state_->kill_signal : SIGTERM); !r) return r;
  detail::process_state* s = state_.get();
  s->kill_timer.set_callback([s] {
    if (!s->exited) (void)detail::signal_child(*s, SIGKILL);
  });
  return s->kill_timer.start(grace);
}

stream* process::stdio_stream(int child_fd) const noexcept {
  if (!state_ || child_fd < 0 || static_cast<std::size_t>(child_fd) >= state_->streams.size()) {
    return nullptr;
  }
  return state_->streams[static_cast<std::size_t>(child_fd)].get();
}

void process::ref() noexcept {
  if (state_) state_->ref();
}
void process::unref() noexcept {
  if (state_) state_->unref();
}

result<process, spawn_error> spawn(loop& l, const spawn_options& o) {
  using namespace detail;
  const std::string& shown = o.file.empty() && !o.args.empty() ? o.args[0] : o.file;
  if (o.args.empty() || o.file.empty()) return fail(prepare_error(errno_code(EINVAL), shown));
  if (!valid_signal(o.kill_signal)) return fail(prepare_error(errno_code(EINVAL), shown));
  if (o.parent_death_signal != 0) {
    if (!valid_signal(o.parent_death_signal)) {
      return fail(prepare_error(errno_code(EINVAL), shown));
    }
#if !defined(__linux__) && !defined(__FreeBSD__)
    return fail(prepare_error(errno_code(ENOTSUP), shown));
#endif
  }
  if (!o.pid_variable.empty() &&
      o.pid_variable.find_first_of(std::string_view("=\0", 2)) != std::string::npos) {
    return fail(prepare_error(errno_code(EINVAL), shown));
  }
  if (sigchld_ignored()) return fail(prepare_error(make_error_code(errc::sigchld_ignored), shown));

  prepared p;
  // Held while the environment is read. When the child gets the environment itself (not a
  // copy), held until the child has exec'd: it reads environ while this thread waits.
  std::shared_lock env_lock(environment_mutex());
  char* const* envp = build_env(o, p);
  build_candidates(o, p);
  if (p.own_env) env_lock.unlock();
  // execve takes char* const* but writes through none of them.
  for (const std::string& a : o.args) p.argv.push_back(const_cast<char*>(a.c_str()));
  p.argv.push_back(nullptr);
  if (auto r = build_stdio(o, p); !r) return fail(prepare_error(r.error(), shown));

  // Non-blocking: the child has exec'd or written its whole report by the time start_child
  // returns (it shares our memory and we were suspended until then), so the read below never
  // needs to wait. Waiting for EOF instead could hang: a process forked elsewhere meanwhile
  // may hold a copy of the write end.
  auto report = make_pipe(fd_mode::nonblocking);
  if (!report) return fail(prepare_error(report.error(), shown));

  const int fd_limit = descriptor_limit();

  async_safe::child_plan plan{};
  plan.candidates = p.candidate_ptrs.data();
  plan.candidate_count = static_cast<int>(p.candidate_ptrs.size());
  plan.argv = p.argv.data();
  plan.envp = envp;
  plan.pid_slot = p.pid_slot_entry == SIZE_MAX
                      ? nullptr
                      : p.env_storage[p.pid_slot_entry].data() + o.pid_variable.size() + 1;
  plan.cwd = o.cwd.empty() ? nullptr : o.cwd.c_str();
  plan.setsid = o.detached;
  plan.setpgid = o.process_group.has_value();
  plan.pgid = o.process_group.value_or(0);
  plan.set_gid = o.gid.has_value();
  plan.gid = o.gid.value_or(0);
  plan.set_uid = o.uid.has_value();
  plan.uid = o.uid.value_or(0);
  plan.parent_death_signal = o.parent_death_signal;
  plan.parent_pid = ::getpid();
  plan.actions = p.actions.data();
  plan.action_count = static_cast<int>(p.actions.size());
  plan.scratch = p.scratch.data();
  plan.close_other_fds = o.close_other_fds;
  plan.keep_below = static_cast<int>(o.stdio.size());
  plan.fd_limit = fd_limit;
  plan.report_fd = report->write.get();
  if (o.close_other_fds && spawn_backend::can_share_fd_table() && !names_descriptors(o, p)) {
    // The child needs no descriptor at or above this: the targets, the sources, the report
    // pipe. Everything else would be closed in it anyway.
    int needed = std::max(plan.keep_below, plan.report_fd + 1);
    for (const async_safe::fd_action& a : p.actions) {
      if (a.what == async_safe::fd_action::kind::dup) needed = std::max(needed, a.source + 1);
    }
    plan.unshare_below = needed;
  }

  auto started = spawn_backend::start_child(plan);
  if (env_lock.owns_lock()) env_lock.unlock();
  if (!started) return fail(spawn_error{spawn_step::fork, started.error(), shown});
  // The child has exec'd or failed: its copies of the pipe ends and of the report pipe's write
  // end are its own now.
  report->write.reset();
  p.child_ends.clear();

  async_safe::child_report rep{};
  std::size_t got = 0;
  while (got < sizeof rep) {
    // EAGAIN or EOF: the child exec'd and wrote nothing.
    auto n = sys::read(report->read.get(), reinterpret_cast<char*>(&rep) + got, sizeof rep - got);
    if (!n || *n == 0) break;
    got += *n;
  }
  if (got == sizeof rep) {
    // The child failed before exec and called _exit(127): collect it now (it is gone or
    // going), so that no zombie stays.
    collect(started->pid);
    const spawn_step step = step_of(rep.step);
    std::string path = shown;
    if (step == spawn_step::chdir) {
      path = o.cwd;
    } else if (step == spawn_step::open && rep.index >= 0 &&
               static_cast<std::size_t>(rep.index) < p.actions.size() &&
               p.actions[static_cast<std::size_t>(rep.index)].path != nullptr) {
      path = p.actions[static_cast<std::size_t>(rep.index)].path;
    } else if (step == spawn_step::exec && rep.index >= 0 &&
               static_cast<std::size_t>(rep.index) < p.candidates.size() &&
               o.file.find('/') != std::string::npos) {
      path = p.candidates[static_cast<std::size_t>(rep.index)];
    }
    return fail(spawn_error{step, errno_code(rep.error), path});
  }

  // From here on the child runs: nothing may leave it unwatched. If an allocation throws, kill
  // and collect it before passing the exception on.
  try {
    reaper& r = reaper::of(l);
    auto state = std::make_unique<process_state>(l, r);
    state->pid = started->pid;
    // With many children alive their pidfds would fill the low descriptor numbers that every
    // spawn's child copies; with few, moving them costs more than it saves.
    state->pidfd = r.live_count() >= many_children
                       ? spawn_backend::move_out_of_the_way(std::move(started->pidfd))
                       : std::move(started->pidfd);
    state->kill_signal = o.kill_signal;
    state->set_running(true);
    state->streams.resize(o.stdio.size());
    for (auto& end : p.parent_ends) {
      auto s = std::make_unique<stream>(l);
      // Cannot fail for a pipe or socketpair end just made; if it did, the entry stays null.
      if (stream_opener::open_new(*s, std::move(end.fd), end.kind)) {
        state->streams[static_cast<std::size_t>(end.child_fd)] = std::move(s);
      }
    }
    if (auto w = r.add(*state); !w) {
      // Nothing could tell us when it ends: do not leave it unwatched. Kill and collect it.
      kill_and_collect(started->pid);
      state->exited = true;
      return fail(spawn_error{spawn_step::prepare, w.error(), shown});
    }
    return process(std::move(state));
  } catch (...) {
    kill_and_collect(started->pid);
    throw;
  }
}

}  // namespace kin
