// Test helpers that look at the process itself: open descriptors, child processes, and running
// the helper child binary with a bounded wait.
#pragma once

#include <spawn.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace kin_test {

/// The helper child binary (KIN_TEST_CHILD, set by meson), or "" when it is not set.
inline const std::string& child_path() {
  static const std::string path = [] {
    const char* p = std::getenv("KIN_TEST_CHILD");
    return p != nullptr ? std::string(p) : std::string();
  }();
  return path;
}

/// The descriptors open in this process (the directory listing's own fd excluded).
inline std::set<int> open_fds() {
  std::set<int> fds;
  std::vector<int> seen;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    seen.push_back(std::stoi(entry.path().filename().string()));
  }
  for (int fd : seen) {
    // The iterator's own descriptor is closed by now.
    if (::fcntl(fd, F_GETFD) != -1) fds.insert(fd);
  }
  return fds;
}

inline std::string fd_target(int fd) {
  std::error_code ec;
  auto target = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
  return ec ? std::string("?") : target.string();
}

/// The live (or zombie) children of every thread of this process.
inline std::set<int> child_pids() {
  std::set<int> pids;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "children");
    int pid;
    while (in >> pid) pids.insert(pid);
  }
  return pids;
}

struct child_result {
  bool exited = false;
  int status = -1;  // exit status, or the signal that ended it
  std::string err;  // what it wrote on stderr
  std::string out;  // what it wrote on stdout
};

/// Runs the helper child (KIN_TEST_CHILD) with `args`, collecting stdout and stderr, and waits
/// at most `limit` for it (then kills it).
inline child_result run_child(const std::vector<std::string>& args,
                              std::chrono::seconds limit = std::chrono::seconds(20)) {
  const char* path = std::getenv("KIN_TEST_CHILD");
  if (path == nullptr) throw std::runtime_error("KIN_TEST_CHILD is not set");
  std::vector<std::string> all{path};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);

  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  pid_t pid;
  int rc = posix_spawn(&pid, path, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(out[0]);
    ::close(err[0]);
    throw std::runtime_error("posix_spawn failed");
  }
  child_result result;
  // The helper writes little; read both to EOF on two threads to avoid any pipe deadlock.
  auto drain = [](int fd, std::string& into) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) into.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
  };
  std::thread t1(drain, out[0], std::ref(result.out));
  std::thread t2(drain, err[0], std::ref(result.err));
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  t1.join();
  t2.join();
  result.exited = WIFEXITED(status);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status);
  return result;
}

/// Lowers RLIMIT_NOFILE so that only `room` more descriptors can be created, for as long as it
/// lives (the limit becomes the lowest free number plus `room`).
class fd_limit {
 public:
  explicit fd_limit(int room) {
    if (::getrlimit(RLIMIT_NOFILE, &saved_) != 0) throw std::runtime_error("getrlimit");
    const int lowest_free = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lowest_free < 0) throw std::runtime_error("open /dev/null");
    ::close(lowest_free);
    rlimit tight = saved_;
    tight.rlim_cur = static_cast<rlim_t>(lowest_free + room);
    if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) throw std::runtime_error("setrlimit");
  }
  fd_limit(const fd_limit&) = delete;
  fd_limit& operator=(const fd_limit&) = delete;
  ~fd_limit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }

 private:
  rlimit saved_{};
};

/// Polls `pred` until it holds or `limit` passes; returns the last value of `pred`.
template <class Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = std::chrono::milliseconds(10000)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace kin_test
