// The helper child's behaviours for the tests of kin::spawn: it reports what it was started
// with (arguments, environment, directory, descriptors, signal state, ids, process group) on
// stdout, writes to or echoes through descriptors, exits or dies as asked, and spawns a
// grandchild itself where the test process cannot (as an unprivileged user). Every behaviour
// that waits ends by itself after a bounded time, so a test that fails to kill it leaves no
// process behind for long.
#include <kin/loop.hpp>
#include <kin/process.hpp>

#include "pattern.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

namespace kin_test_child {

namespace {

using namespace std::chrono_literals;

// The uid and gid an unprivileged helper switches to ("nobody" on Debian and most others).
constexpr uid_t nobody_uid = 65534;
constexpr gid_t nobody_gid = 65534;

bool parse_int(const char* text, long& out) {
  if (text == nullptr || *text == '\0') return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtol(text, &end, 10);
  return errno == 0 && *end == '\0';
}

// Writes all of `text` to `fd`; false (errno set) if the descriptor refuses it.
bool write_all(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    text.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void sleep_ms(long ms) {
  timespec left{ms / 1000, (ms % 1000) * 1'000'000};
  while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

// "write-fd N TEXT [N TEXT]...": writes each TEXT followed by a newline to its descriptor, in
// order (so that two targets sharing one file show the order of the writes).
int write_fds(int argc, char** argv) {
  if (argc < 4 || argc % 2 != 0) {
    std::fprintf(stderr, "usage: write-fd N TEXT [N TEXT]...\n");
    return 2;
  }
  for (int i = 2; i + 1 < argc; i += 2) {
    long fd = 0;
    if (!parse_int(argv[i], fd)) return 2;
    const std::string line = std::string(argv[i + 1]) + "\n";
    if (!write_all(static_cast<int>(fd), line)) {
      std::fprintf(stderr, "kin-test-child: write to fd %ld: %s\n", fd, std::strerror(errno));
      return 1;
    }
  }
  return 0;
}

// "echo-stdin": copies stdin to stdout until EOF, then says on stderr how many bytes it read.
// "echo-fd N": copies what arrives on N back to N (a duplex socket) until EOF.
// "copy-fd IN OUT": copies what arrives on IN to OUT until EOF.
int echo(int in, int out, bool summary) {
  char buf[65536];
  unsigned long long total = 0;
  for (;;) {
    const ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::fprintf(stderr, "kin-test-child: read fd %d: %s\n", in, std::strerror(errno));
      return 1;
    }
    if (n == 0) break;
    total += static_cast<unsigned long long>(n);
    if (!write_all(out, std::string_view(buf, static_cast<std::size_t>(n)))) {
      std::fprintf(stderr, "kin-test-child: write fd %d: %s\n", out, std::strerror(errno));
      return 1;
    }
  }
  if (summary) std::fprintf(stderr, "read %llu bytes\n", total);
  return 0;
}

// "describe-fds": one line per open descriptor: its number, what it refers to, and its access
// mode (r, w or rw).
int describe_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return 2;
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (fd == own) continue;
    char target[PATH_MAX] = {};
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n < 0) std::strcpy(target, "?");
    const int flags = ::fcntl(fd, F_GETFL);
    const int mode = flags & O_ACCMODE;
    const char* access = mode == O_RDWR ? "rw" : mode == O_WRONLY ? "w" : "r";
    std::printf("%d %s %s\n", fd, target, access);
  }
  ::closedir(d);
  return 0;
}

const char* disposition_of(int signo) {
  struct sigaction current {};
  if (::sigaction(signo, nullptr, &current) != 0) return "?";
  if ((current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL) return "default";
  if ((current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_IGN) return "ignored";
  return "caught";
}

// "print-sigmask": "empty", or the numbers of the blocked signals, space-separated.
int print_sigmask() {
  sigset_t mask;
  if (::sigprocmask(SIG_SETMASK, nullptr, &mask) != 0) return 2;
  std::string blocked;
  for (int s = 1; s < NSIG; ++s) {
    if (::sigismember(&mask, s) == 1) blocked += (blocked.empty() ? "" : " ") + std::to_string(s);
  }
  std::printf("%s\n", blocked.empty() ? "empty" : blocked.c_str());
  return 0;
}

// "ignore-term-and-sleep MS": ignores SIGTERM, says "ready" on stdout once it does (so the test
// can wait for that instead of guessing), then sleeps MS milliseconds.
int ignore_term_and_sleep(long ms) {
  std::signal(SIGTERM, SIG_IGN);
  if (!write_all(1, "ready\n")) return 1;
  sleep_ms(ms);
  return 0;
}

// "spawn-as-uid": drops to an unprivileged user (unless it already is one), then asks kin::spawn
// for a child running as root. Prints "fail STEP ERRNO" with what spawn returned, "ok" if it
// succeeded (it must not), or "skip REASON" when the helper cannot become unprivileged.
int spawn_as_uid() {
  if (::geteuid() == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(nobody_gid) != 0 || ::setuid(nobody_uid) != 0) {
      std::printf("skip cannot drop to uid %u: %s\n", static_cast<unsigned>(nobody_uid),
                  std::strerror(errno));
      return 0;
    }
  }
  kin::loop l;
  kin::spawn_options options;
  options.file = "/bin/true";
  options.args = {"true"};
  options.uid = 0;
  options.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  auto p = kin::spawn(l, options);
  if (!p) {
    std::printf("fail %s %d\n", kin::to_string(p.error().step), p.error().code.value());
    return 0;
  }
  // It should not have worked; reap the child anyway (bounded) so none is left behind.
  (void)p->kill(SIGKILL);
  kin::timer limit(l, [&] { l.stop(); });
  limit.unref();
  (void)limit.start(5s);
  l.run();
  std::printf("ok\n");
  return 0;
}

// "spawn-with-parent-death SIG [ID]": spawns this binary ("sleep" for ten minutes, with no
// stdio) with parent_death_signal SIG, as user and group ID when given; prints the child's pid
// (or "fail STEP ERRNO") and sleeps, for the test to kill it.
int spawn_with_parent_death(const char* sig_text, const char* id_text) {
  long sig = 0;
  long id = -1;
  if (!parse_int(sig_text, sig) || (id_text != nullptr && !parse_int(id_text, id))) return 2;
  kin::loop l;
  kin::spawn_options options;
  options.file = "/proc/self/exe";
  options.args = {"kin-test-child", "sleep", "600000"};
  options.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  options.parent_death_signal = static_cast<int>(sig);
  if (id >= 0) {
    options.uid = static_cast<uid_t>(id);
    options.gid = static_cast<gid_t>(id);
  }
  auto p = kin::spawn(l, options);
  if (!p) {
    std::printf("fail %s %d\n", kin::to_string(p.error().step), p.error().code.value());
    return 1;
  }
  std::printf("%d\n", static_cast<int>(p->pid()));
  std::fflush(stdout);
  sleep_ms(600'000);
  return 0;
}

}  // namespace

// "reap-without-pidfd": run with KIN_PIDFD=0, spawns this binary three times with kin (exit 7,
// killed by SIGTERM, reaped behind kin's back) and checks the outcomes, and that no pidfd is
// open meanwhile; prints "ok" and exits 0, or says what went wrong and exits 1.
int reap_without_pidfd(const char* self) {
  kin::loop l;
  auto start = [&](const char* what, const char* arg) {
    kin::spawn_options o;
    o.file = self;
    o.args = {self, what, arg};
    o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
    return kin::spawn(l, o);
  };
  auto exits = start("exit-code", "7");
  auto killed = start("sleep", "10000");
  auto stolen = start("exit-code", "0");
  if (!exits || !killed || !stolen) {
    std::printf("spawn failed\n");
    return 1;
  }
  // No pidfd may be open: the reaper must rely on SIGCHLD.
  std::string report;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) {
      char path[300];
      char link[PATH_MAX];
      std::snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
      const ssize_t n = ::readlink(path, link, sizeof link - 1);
      if (n > 0 && std::string_view(link, static_cast<std::size_t>(n)).find("pidfd") !=
                       std::string_view::npos) {
        report += std::string("a pidfd is open: ") + e->d_name + "; ";
      }
    }
    ::closedir(d);
  }
  int stolen_status = 0;
  while (::waitpid(stolen->pid(), &stolen_status, 0) < 0 && errno == EINTR) {
  }
  int results = 0;
  exits->on_exit([&](std::error_code ec, int status, int sig) {
    if (ec || status != 7 || sig != 0) report += "exit-code 7 misreported; ";
    ++results;
  });
  killed->on_exit([&](std::error_code ec, int status, int sig) {
    if (ec || status != -1 || sig != SIGTERM) report += "SIGTERM misreported; ";
    ++results;
  });
  stolen->on_exit([&](std::error_code ec, int, int) {
    if (ec != kin::errc::status_unknown) report += "ECHILD not reported as status unknown; ";
    ++results;
  });
  if (!killed->kill(SIGTERM)) report += "kill failed; ";
  kin::timer deadline(l, [&] { l.stop(); });
  deadline.unref();
  (void)deadline.start(std::chrono::seconds(10));
  l.run();
  if (results != 3) report += "not every child was reported; ";
  if (!report.empty()) {
    std::printf("%s\n", report.c_str());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

// "interleave BYTES": writes BYTES pattern bytes to stdout and BYTES to stderr, alternating
// 4 KiB at a time.
int interleave(long total) {
  constexpr std::size_t chunk = 4096;
  std::string buf(chunk, '\0');
  for (std::size_t done = 0; done < static_cast<std::size_t>(total); done += chunk) {
    const std::size_t len = std::min(chunk, static_cast<std::size_t>(total) - done);
    for (int which = 1; which <= 2; ++which) {
      for (std::size_t i = 0; i < len; ++i) buf[i] = kin_test::pattern_byte(which, done + i);
      if (!write_all(which, std::string_view(buf.data(), len))) return 1;
    }
  }
  return 0;
}

// "slow-echo": copies stdin to stdout 4 KiB at a time, pausing 1 ms after every 256 KiB.
int slow_echo() {
  char buf[4096];
  std::size_t total = 0;
  for (;;) {
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return 1;
    if (n == 0) return 0;
    if (!write_all(1, std::string_view(buf, static_cast<std::size_t>(n)))) return 1;
    const std::size_t before = total;
    total += static_cast<std::size_t>(n);
    if (before / (256 * 1024) != total / (256 * 1024)) sleep_ms(1);
  }
}

int process_main(std::string_view behaviour, int argc, char** argv) {
  const char* arg2 = argc > 2 ? argv[2] : nullptr;
  long n = 0;
  if (behaviour == "reap-without-pidfd") return reap_without_pidfd("/proc/self/exe");
  if (behaviour == "spawn-with-parent-death") {
    return spawn_with_parent_death(arg2, argc > 3 ? argv[3] : nullptr);
  }
  if (behaviour == "exit-code") {
    // "exit-code N": exits with status N.
    return parse_int(arg2, n) ? static_cast<int>(n) : 2;
  }
  if (behaviour == "kill-self") {
    // "kill-self SIG": dies of signal SIG (its disposition reset first, so it cannot be
    // ignored or caught).
    if (!parse_int(arg2, n)) return 2;
    std::signal(static_cast<int>(n), SIG_DFL);
    ::kill(::getpid(), static_cast<int>(n));
    sleep_ms(10'000);  // a blocked signal would arrive here; never exit 0 by mistake
    return 4;
  }
  if (behaviour == "sleep") {
    // "sleep MS": sleeps MS milliseconds, then exits 0.
    if (!parse_int(arg2, n)) return 2;
    sleep_ms(n);
    return 0;
  }
  if (behaviour == "write-fd") return write_fds(argc, argv);
  if (behaviour == "echo-stdin") return echo(0, 1, true);
  if (behaviour == "interleave") return parse_int(arg2, n) ? interleave(n) : 2;
  if (behaviour == "slow-echo") return slow_echo();
  if (behaviour == "echo-fd") {
    if (!parse_int(arg2, n)) return 2;
    return echo(static_cast<int>(n), static_cast<int>(n), false);
  }
  if (behaviour == "copy-fd") {
    long out = 0;
    if (!parse_int(arg2, n) || argc < 4 || !parse_int(argv[3], out)) return 2;
    return echo(static_cast<int>(n), static_cast<int>(out), false);
  }
  if (behaviour == "describe-fds") return describe_fds();
  if (behaviour == "print-args") {
    // Every argument, argv[0] included, one per line.
    for (int i = 0; i < argc; ++i) std::printf("%s\n", argv[i]);
    return 0;
  }
  if (behaviour == "print-cwd") {
    char buf[PATH_MAX];
    if (::getcwd(buf, sizeof buf) == nullptr) return 1;
    std::printf("%s\n", buf);
    return 0;
  }
  if (behaviour == "print-env") {
    // "print-env NAME": its value, or "<unset>".
    if (arg2 == nullptr) return 2;
    const char* value = std::getenv(arg2);
    std::printf("%s\n", value != nullptr ? value : "<unset>");
    return 0;
  }
  if (behaviour == "print-environ") {
    // The whole environment, one NAME=VALUE per line, in the order the child got it.
    for (char** e = environ; *e != nullptr; ++e) std::printf("%s\n", *e);
    return 0;
  }
  if (behaviour == "print-sigpipe") {
    std::printf("%s\n", disposition_of(SIGPIPE));
    return 0;
  }
  if (behaviour == "print-disposition") {
    // "print-disposition SIG": "default", "ignored" or "caught".
    if (!parse_int(arg2, n)) return 2;
    std::printf("%s\n", disposition_of(static_cast<int>(n)));
    return 0;
  }
  if (behaviour == "print-sigmask") return print_sigmask();
  if (behaviour == "print-pgid-sid") {
    // "PID PGID SID".
    std::printf("%d %d %d\n", static_cast<int>(::getpid()), static_cast<int>(::getpgid(0)),
                static_cast<int>(::getsid(0)));
    return 0;
  }
  if (behaviour == "print-ids") {
    // "UID GID EUID EGID NGROUPS" (NGROUPS: the number of supplementary groups).
    std::printf("%u %u %u %u %d\n", static_cast<unsigned>(::getuid()),
                static_cast<unsigned>(::getgid()), static_cast<unsigned>(::geteuid()),
                static_cast<unsigned>(::getegid()), ::getgroups(0, nullptr));
    return 0;
  }
  if (behaviour == "ignore-term-and-sleep") {
    if (!parse_int(arg2, n)) return 2;
    return ignore_term_and_sleep(n);
  }
  if (behaviour == "spawn-as-uid") return spawn_as_uid();
  return -1;
}

}  // namespace kin_test_child
