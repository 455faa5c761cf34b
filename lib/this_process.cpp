// kin::this_process and the environment lock: every read of the environment through kin holds
// environment_mutex() shared, every change holds it exclusively. The /proc readers are Linux
// only and use no more than a stack buffer, so the noexcept queries never allocate.
#include <kin/this_process.hpp>

#include "environment_lock.hpp"
#include "posix/sys.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <ctime>
#include <forward_list>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string_view>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#if defined(__APPLE__)
// A shared library cannot link to environ on macOS; the C runtime hands out its address.
#include <crt_externs.h>
#define environ (*_NSGetEnviron())
#else
extern char** environ;
#endif

namespace kin::detail {

std::shared_mutex& environment_mutex() noexcept {
  static std::shared_mutex m;
  return m;
}

}  // namespace kin::detail

namespace kin::this_process {

namespace {

using namespace std::string_view_literals;

std::uint64_t clock_ns(clockid_t clock) noexcept {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// uptime()'s origin where the kernel's start time cannot be read.
const std::uint64_t loaded_at_ns = clock_ns(CLOCK_MONOTONIC);

// The names setenv accepts and getenv can find: getenv("A=B") would return the tail of an
// entry "A=B=c", and a NUL would cut the name short.
bool is_valid_name(std::string_view name) noexcept {
  return !name.empty() && name.find_first_of("=\0"sv) == std::string_view::npos;
}

std::uint64_t microseconds(const timeval& tv) noexcept {
  return static_cast<std::uint64_t>(tv.tv_sec) * 1'000'000u +
         static_cast<std::uint64_t>(tv.tv_usec);
}

#if defined(__linux__)
// The start of a small /proc file, into `buf`: its length, or 0 if the file cannot be read.
std::size_t read_proc_file(const char* path, char* buf, std::size_t size) noexcept {
  auto fd = sys::open(path, O_RDONLY);
  if (!fd) return 0;
  std::size_t got = 0;
  while (got < size) {
    auto n = sys::read(fd->get(), buf + got, size - got);
    if (!n || *n == 0) break;
    got += *n;
  }
  return got;
}

// /proc/self/cmdline: each argument followed by a NUL. A program that wrote over its argv
// strings (setproctitle) may have left the last one without its NUL.
std::vector<std::string> read_cmdline() {
  std::vector<std::string> args;
  auto fd = sys::open("/proc/self/cmdline", O_RDONLY);
  if (!fd) return args;
  std::string bytes;
  char chunk[4096];
  for (;;) {
    auto n = sys::read(fd->get(), chunk, sizeof chunk);
    if (!n || *n == 0) break;
    bytes.append(chunk, *n);
  }
  std::size_t start = 0;
  while (start < bytes.size()) {
    std::size_t end = bytes.find('\0', start);
    if (end == std::string::npos) end = bytes.size();
    args.emplace_back(bytes, start, end - start);
    start = end + 1;
  }
  return args;
}

// The 1-based `field` of /proc/self/stat as a number, counted from field 3: field 2 (the
// command name, in parentheses) may itself hold spaces and ')', so counting starts after the
// last ')'.
bool read_stat_field(int field, std::uint64_t& value) noexcept {
  char buf[1024];
  const std::size_t n = read_proc_file("/proc/self/stat", buf, sizeof buf);
  const std::string_view stat(buf, n);
  const std::size_t close = stat.rfind(')');
  if (close == std::string_view::npos) return false;
  const char* p = buf + close + 1;
  const char* const end = buf + n;
  for (int i = 3; p < end; ++i) {
    while (p < end && *p == ' ') ++p;
    const char* token = p;
    while (p < end && *p != ' ') ++p;
    if (i == field) return std::from_chars(token, p, value).ec == std::errc() && token != p;
  }
  return false;
}
#endif

// argv()'s vectors: every one set is kept, so the references argv() returned stay valid. Never
// destroyed, so argv() works from other static objects' destructors too.
struct argv_store {
  std::mutex mutex;
  std::forward_list<std::vector<std::string>> generations;
  const std::vector<std::string>* current = nullptr;
};

argv_store& store() {
  static auto* s = new argv_store;
  return *s;
}

}  // namespace

pid_t pid() noexcept { return ::getpid(); }

pid_t ppid() noexcept { return ::getppid(); }

const std::vector<std::string>& argv() {
  argv_store& s = store();
  std::lock_guard lock(s.mutex);
  if (s.current == nullptr) {
#if defined(__linux__)
    s.generations.push_front(read_cmdline());
#else
    s.generations.emplace_front();
#endif
    s.current = &s.generations.front();
  }
  return *s.current;
}

void set_argv(int argc, const char* const* values) {
  std::vector<std::string> args;
  for (int i = 0; i < argc && values != nullptr && values[i] != nullptr; ++i) {
    args.emplace_back(values[i]);
  }
  argv_store& s = store();
  std::lock_guard lock(s.mutex);
  s.generations.push_front(std::move(args));
  s.current = &s.generations.front();
}

std::optional<std::string> get_env(std::string_view name) {
  if (!is_valid_name(name)) return std::nullopt;
  const std::string n(name);
  std::shared_lock lock(detail::environment_mutex());
  const char* value = ::getenv(n.c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

result<void> set_env(std::string_view name, std::string_view value) noexcept {
  if (!is_valid_name(name) || value.find('\0') != std::string_view::npos) {
    return fail(errno_code(EINVAL));
  }
  try {
    const std::string n(name);
    const std::string v(value);
    std::unique_lock lock(detail::environment_mutex());
    if (::setenv(n.c_str(), v.c_str(), 1) != 0) return fail(sys::last_error());
  } catch (const std::bad_alloc&) {
    return fail(errno_code(ENOMEM));
  }
  return {};
}

result<void> unset_env(std::string_view name) noexcept {
  if (!is_valid_name(name)) return fail(errno_code(EINVAL));
  try {
    const std::string n(name);
    std::unique_lock lock(detail::environment_mutex());
    if (::unsetenv(n.c_str()) != 0) return fail(sys::last_error());
  } catch (const std::bad_alloc&) {
    return fail(errno_code(ENOMEM));
  }
  return {};
}

std::vector<std::pair<std::string, std::string>> environment() {
  std::vector<std::pair<std::string, std::string>> env;
  std::shared_lock lock(detail::environment_mutex());
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::size_t eq = entry.find('=');
    if (eq == std::string_view::npos) {
      env.emplace_back(std::string(entry), std::string());
    } else {
      env.emplace_back(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
    }
  }
  return env;
}

std::uint64_t hrtime() noexcept { return clock_ns(CLOCK_MONOTONIC); }

cpu_times cpu_usage() noexcept {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return {};
  return {microseconds(ru.ru_utime), microseconds(ru.ru_stime)};
}

std::size_t memory_usage() noexcept {
#if defined(__linux__)
  // statm: sizes in pages, the resident set second.
  char buf[256];
  const std::size_t n = read_proc_file("/proc/self/statm", buf, sizeof buf);
  const char* const end = buf + n;
  const char* p = std::find(static_cast<const char*>(buf), end, ' ');
  std::size_t pages = 0;
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (p != end && std::from_chars(p + 1, end, pages).ec == std::errc() && page_size > 0) {
    return pages * static_cast<std::size_t>(page_size);
  }
#endif
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0 || ru.ru_maxrss < 0) return 0;
#if defined(__APPLE__)
  return static_cast<std::size_t>(ru.ru_maxrss);  // bytes on macOS
#else
  return static_cast<std::size_t>(ru.ru_maxrss) * 1024;  // KiB on Linux and the BSDs
#endif
}

double uptime() noexcept {
#if defined(__linux__)
  // Field 22, starttime: clock ticks after boot, on the clock CLOCK_BOOTTIME reads (both are
  // shifted alike inside a time namespace).
  std::uint64_t start_ticks = 0;
  const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  if (ticks_per_second > 0 && read_stat_field(22, start_ticks)) {
    const auto tps = static_cast<std::uint64_t>(ticks_per_second);
    const std::uint64_t start_ns =
        start_ticks / tps * 1'000'000'000u + start_ticks % tps * 1'000'000'000u / tps;
    const std::uint64_t now_ns = clock_ns(CLOCK_BOOTTIME);
    return now_ns > start_ns ? static_cast<double>(now_ns - start_ns) / 1e9 : 0.0;
  }
#endif
  const std::uint64_t now_ns = clock_ns(CLOCK_MONOTONIC);
  return now_ns > loaded_at_ns ? static_cast<double>(now_ns - loaded_at_ns) / 1e9 : 0.0;
}

}  // namespace kin::this_process
