// kin-run: runs a program with kin::spawn_sync and prints what happened as one JSON object
// whose fields mean what Node's spawnSync result fields mean (encoding 'utf8').
#include "json_text.hpp"

#include <kin/process.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

constexpr const char* usage = R"(usage: kin-run [OPTIONS] -- PROGRAM [ARGS...]

Runs PROGRAM with ARGS (PROGRAM is looked up in PATH when it has no '/'), with stdin, stdout
and stderr as pipes, waits for it, and prints one line of JSON:

  {"pid":N,"status":N|null,"signal":"SIGNAME"|null,"stdout":"..."|null,"stderr":"..."|null,
   "error":null|"CODE"}

The fields mean what the fields of Node's child_process.spawnSync() result mean with
encoding 'utf8': pid is 0, status and signal null and stdout and stderr null when the program
could not be started; signal is "" for a signal without a name (a real-time one); stdout and stderr are the captured bytes decoded as UTF-8 (an ill-formed
sequence becomes U+FFFD); error is the code of what went wrong (ENOENT, EACCES, ENOEXEC,
ETIMEDOUT, ENOBUFS, EPIPE, ...) or null.

Options:
  --timeout MS         after MS milliseconds send the kill signal, stop reading, error
                       ETIMEDOUT (0, the default: no limit)
  --kill-signal SIG    the signal for --timeout and --max-buffer: a name with its SIG prefix,
                       in any case (SIGTERM, sigterm), or the number of a named signal
                       (default SIGTERM)
  --max-buffer BYTES   most bytes of stdout and stderr together; past it the child is sent the
                       kill signal and the error is ENOBUFS (default 1048576; 0: no limit)
  --cwd DIR            run in DIR
  --env K=V            set K to V in the child's environment (repeatable)
  --clear-env          start the child's environment empty (only --env entries)
  --input FILE         write the bytes of FILE to the child's stdin (default: nothing, EOF)
  --shell              run '/bin/sh -c "PROGRAM ARGS..."' (the words joined with spaces)
  --help               print this text

Exit status: the child's exit status; 128 + the signal number when a signal ended it; 127 when
it could not be started; 2 for a usage error.

Unlike Node (whose execvp falls back to /bin/sh), an executable file that is neither a binary
nor a '#!' script is not run: the error is ENOEXEC.
)";

struct signal_name {
  int number;
  const char* name;
};

// The names Node reports (os.constants.signals), first name first for a number.
constexpr signal_name signal_names[] = {
    {SIGHUP, "SIGHUP"},       {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},   {SIGILL, "SIGILL"},
    {SIGTRAP, "SIGTRAP"},     {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},     {SIGFPE, "SIGFPE"},
    {SIGKILL, "SIGKILL"},     {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"},   {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"},     {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},   {SIGCHLD, "SIGCHLD"},
    {SIGCONT, "SIGCONT"},     {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"},   {SIGTTIN, "SIGTTIN"},
    {SIGTTOU, "SIGTTOU"},     {SIGURG, "SIGURG"},   {SIGXCPU, "SIGXCPU"},   {SIGXFSZ, "SIGXFSZ"},
    {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"}, {SIGWINCH, "SIGWINCH"}, {SIGIO, "SIGIO"},
    {SIGSYS, "SIGSYS"},
#ifdef SIGSTKFLT
    {SIGSTKFLT, "SIGSTKFLT"},
#endif
#ifdef SIGPWR
    {SIGPWR, "SIGPWR"},
#endif
#ifdef SIGINFO
    {SIGINFO, "SIGINFO"},
#endif
#ifdef SIGEMT
    {SIGEMT, "SIGEMT"},
#endif
#ifdef SIGIOT
    {SIGIOT, "SIGIOT"},
#endif
#ifdef SIGPOLL
    {SIGPOLL, "SIGPOLL"},
#endif
};

const char* name_of_signal(int sig) {
  for (const signal_name& s : signal_names) {
    if (s.number == sig) return s.name;
  }
  return nullptr;
}

bool same_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto up = [](char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; };
    if (up(a[i]) != up(b[i])) return false;
  }
  return true;
}

std::optional<int> parse_signal(std::string_view text) {
  int number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc() && end == text.data() + text.size()) {
    // As Node: only the numbers of signals it has names for.
    if (name_of_signal(number) != nullptr) return number;
    return std::nullopt;
  }
  for (const signal_name& s : signal_names) {
    const std::string_view name = s.name;
    if (same_ignoring_case(text, name)) {
      return s.number;
    }
  }
  return std::nullopt;
}

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// The errno name Node reports as error.code (ENOENT, EACCES, ...).
std::string error_code_name(const std::error_code& ec) {
  if (ec == kin::errc::status_unknown) return "ECHILD";
  if (ec.category() == std::system_category() || ec.category() == std::generic_category()) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    if (const char* name = ::strerrorname_np(ec.value())) return name;
#endif
    return fmt::format("E{}", ec.value());
  }
  return ec.message();
}

bool read_file(const std::string& path, std::string& into) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int saved = errno;
      ::close(fd);
      errno = saved;
      return n == 0;
    }
    into.append(buf, static_cast<std::size_t>(n));
  }
}

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "kin-run: %s\n(kin-run --help shows the usage)\n", what.c_str());
  std::exit(2);
}

struct command_line {
  kin::spawn_sync_options options;
  bool shell = false;
};

command_line parse(int argc, char** argv) {
  command_line c;
  c.options.limit = kin::buffer_limit::all_streams;
  int i = 1;
  auto value = [&](std::string_view opt) -> std::string_view {
    if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", opt));
    return argv[++i];
  };
  for (; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (a == "--timeout") {
      auto ms = parse_number<long long>(value(a));
      if (!ms || *ms < 0) usage_error("--timeout takes a number of milliseconds");
      c.options.timeout = std::chrono::milliseconds(*ms);
    } else if (a == "--kill-signal") {
      const std::string_view v = value(a);
      auto sig = parse_signal(v);
      if (!sig) usage_error(fmt::format("unknown signal: {}", v));
      c.options.kill_signal = *sig;
    } else if (a == "--max-buffer") {
      auto n = parse_number<std::size_t>(value(a));
      if (!n) usage_error("--max-buffer takes a number of bytes");
      c.options.max_buffer = *n;
    } else if (a == "--cwd") {
      c.options.cwd = std::string(value(a));
    } else if (a == "--env") {
      const std::string_view v = value(a);
      const std::size_t eq = v.find('=');
      if (eq == std::string_view::npos || eq == 0) usage_error("--env takes NAME=VALUE");
      c.options.env.emplace_back(std::string(v.substr(0, eq)), std::string(v.substr(eq + 1)));
    } else if (a == "--clear-env") {
      c.options.clear_env = true;
    } else if (a == "--input") {
      const std::string path(value(a));
      if (!read_file(path, c.options.input)) {
        usage_error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
      }
    } else if (a == "--shell") {
      c.shell = true;
    } else {
      usage_error(fmt::format("unknown option: {}", a));
    }
  }
  if (i >= argc) usage_error("no program given (after --)");
  std::vector<std::string> words(argv + i, argv + argc);
  if (c.shell) {
    std::string command;
    for (const std::string& w : words) {
      if (!command.empty()) command += ' ';
      command += w;
    }
    c.options.file = "/bin/sh";
    c.options.args = {"/bin/sh", "-c", command};
  } else {
    c.options.file = words[0];
    c.options.args = std::move(words);
  }
  return c;
}

std::string json_output(const std::optional<std::string>& bytes, bool ran) {
  if (!ran || !bytes) return "null";
  return kin_run::json_quote(kin_run::decode_utf8(*bytes));
}

}  // namespace

int main(int argc, char** argv) {
  command_line c = parse(argc, argv);
  // An ignored SIGCHLD survives exec; kin::spawn refuses to start children under it (their
  // statuses would be lost). kin-run owns its process: take the default back, as Node does.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGCHLD, &dfl, nullptr);
  const kin::spawn_sync_result r = kin::spawn_sync(c.options);
  const bool ran = r.pid != 0;

  std::string json = fmt::format("{{\"pid\":{},\"status\":", r.pid);
  json += r.exit_status ? std::to_string(*r.exit_status) : "null";
  json += ",\"signal\":";
  if (r.term_signal == 0) {
    json += "null";
  } else {
    // A signal Node has no name for (a real-time one) comes out as "", as in Node.
    const char* sig = name_of_signal(r.term_signal);
    json += kin_run::json_quote(sig != nullptr ? sig : "");
  }
  json += ",\"stdout\":" + json_output(r.output.size() > 1 ? r.output[1] : std::nullopt, ran);
  json += ",\"stderr\":" + json_output(r.output.size() > 2 ? r.output[2] : std::nullopt, ran);
  json += ",\"error\":";
  json += r.error ? kin_run::json_quote(error_code_name(r.error)) : "null";
  json += "}\n";
  if (std::fwrite(json.data(), 1, json.size(), stdout) != json.size() || std::fflush(stdout) != 0) {
    return 2;
  }

  if (!ran) return 127;
  if (r.term_signal != 0) return 128 + r.term_signal;
  return r.exit_status.value_or(1);
}
