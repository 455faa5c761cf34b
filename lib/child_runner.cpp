// child_runner: one child served to its end (input, capture, timeout, output limit).
#include "child_runner.hpp"

#include "process_access.hpp"

#include <kin/result.hpp>

#include <cerrno>
#include <csignal>
#include <cstring>

namespace kin::detail {

namespace {

// The side of a pipe entry the parent reads from and writes to.
struct pipe_use {
  bool feed = false;     // the parent writes the input into it
  bool capture = false;  // the parent reads what the child writes
};

pipe_use use_of(const stdio& s, int fd) noexcept {
  stdio::direction d = s.pipe_direction();
  if (d == stdio::direction::automatic) {
    d = fd == 0 ? stdio::direction::child_reads : stdio::direction::child_writes;
  }
  switch (d) {
    case stdio::direction::child_reads:
      return {fd == 0, false};
    case stdio::direction::child_writes:
      return {false, true};
    case stdio::direction::duplex:
    case stdio::direction::automatic:
      return {fd == 0, true};
  }
  return {};
}

}  // namespace

child_runner::child_runner(loop& l, run_limits limits, std::string_view input, done_callback done)
    : impl_(l.impl()),
      limits_(limits),
      input_(input.size()),
      done_(std::move(done)),
      timeout_(l,
               [this] {
                 timed_out_ = true;
                 note(errno_code(ETIMEDOUT));
                 kill();
               }),
      grace_(l, [this] {
        if (!exited_) (void)signal_child(*child_, SIGKILL);
      }) {
  if (!input.empty()) std::memcpy(input_.data(), input.data(), input.size());
}

result<process, spawn_error> child_runner::start(loop& l, const spawn_options& o) {
  res_.output.resize(o.stdio.size());  // a fresh result: every entry empty
  // An invalid kill signal is not an error here: the child gets SIGKILL instead (kill()).
  std::optional<spawn_options> fixed;
  if (o.kill_signal <= 0 || o.kill_signal >= NSIG) {
    fixed.emplace(o);
    fixed->kill_signal = SIGKILL;
  }
  auto p = spawn(l, fixed ? *fixed : o);
  if (!p) {
    res_.error = p.error().code;
    res_.failure = p.error();
    return p;
  }
  res_.pid = p->pid();
  child_ = &process_access::state(*p);
  try {
    streams_ = take_streams(*child_);
    observe_exit(*child_, [this](std::error_code ec, int st, int sig) { exited(ec, st, sig); });
    for (std::size_t i = 0; i < streams_.size(); ++i) {
      if (!streams_[i]) continue;
      const int fd = static_cast<int>(i);
      const pipe_use use = use_of(o.stdio[i], fd);
      if (use.capture) {
        res_.output[i] = std::string();
        (void)streams_[i]->read_start(
            [this, fd](std::error_code ec, std::span<const std::byte> data, std::span<unique_fd>) {
              if (!ec) {
                capture(fd, data);
                return;
              }
              if (ec != make_error_code(errc::eof)) note_pipe(ec);
              end_stream(fd);
            });
      }
      if (use.feed && !input_.empty()) {
        serve_input(*streams_[i]);
      } else if (!use.capture) {
        // Nothing to write (the child sees EOF at once), or a pipe the child reads from other
        // than its input.
        streams_[i].reset();
      } else if (use.feed) {
        streams_[i]->shutdown();  // a duplex entry: no input, but its output is captured
      }
    }
    if (limits_.timeout.count() > 0) (void)timeout_.start(limits_.timeout);
  } catch (...) {
    // The process object goes with the exception and the reaper adopts the child: it must not
    // call back into this runner, and must not run on unwatched.
    observe_exit(*child_, {});
    (void)signal_child(*child_, SIGKILL);
    child_ = nullptr;
    exited_ = true;
    throw;
  }
  check_done();
  return p;
}

// Writes the input and then half-closes; a duplex entry goes on being read.
void child_runner::serve_input(stream& s) {
  auto after = [this](std::error_code ec) {
    if (ec && ec != std::errc::operation_canceled) note_pipe(ec);
    if (ec || !res_.output[0]) end_stream(0);
  };
  s.write(std::move(input_), [this, after](std::error_code ec) {
    if (ec) {
      after(ec);
      return;
    }
    if (streams_[0]) streams_[0]->shutdown(after);
  });
}

void child_runner::capture(int fd, std::span<const std::byte> data) {
  std::string& out = *res_.output[static_cast<std::size_t>(fd)];
  const char* bytes = reinterpret_cast<const char*>(data.data());
  const std::size_t max = limits_.max_buffer;
  if (max == 0) {
    out.append(bytes, data.size());
    return;
  }
  bool over = false;
  if (limits_.limit == buffer_limit::per_stream) {
    const std::size_t room = max - out.size();
    over = data.size() > room;
    out.append(bytes, over ? room : data.size());
  } else {
    out.append(bytes, data.size());
    captured_ += data.size();
    over = captured_ > max;
  }
  if (over) {
    if (!res_.error) res_.overflow_fd = fd;
    note(errno_code(ENOBUFS));
    kill();
  }
}

void child_runner::end_stream(int fd) noexcept {
  auto& s = streams_[static_cast<std::size_t>(fd)];
  if (!s) return;
  s.reset();  // may be the stream whose callback is running: streams allow that
  check_done();
}

void child_runner::exited(std::error_code ec, int status, int sig) noexcept {
  exited_ = true;
  killed_by_caller_ = was_killed(*child_) && !signalled_;
  child_ = nullptr;
  grace_.stop();
  if (ec) {
    note(ec);
  } else if (sig != 0) {
    res_.term_signal = sig;
  } else {
    res_.exit_status = status;
  }
  check_done();
}

// As Node's spawnSync: signal the child once, and stop reading and writing at once, so that
// children it left behind with the pipes cannot hold the caller up.
void child_runner::kill() noexcept {
  if (killed_) return;
  killed_ = true;
  timeout_.stop();
  if (!exited_) {
    const int sig =
        limits_.kill_signal > 0 && limits_.kill_signal < NSIG ? limits_.kill_signal : SIGKILL;
    auto r = signal_child(*child_, sig);
    if (!r && r.error() != std::errc::no_such_process) r = signal_child(*child_, SIGKILL);
    signalled_ = r.has_value();
    if (limits_.kill_grace) (void)grace_.start(*limits_.kill_grace);
  }
  for (auto& s : streams_) s.reset();
  check_done();
}

void child_runner::note(std::error_code ec) noexcept {
  if (!res_.error) res_.error = ec;
}

void child_runner::note_pipe(std::error_code ec) noexcept {
  if (!pipe_error_) pipe_error_ = ec;
}

void child_runner::check_done() {
  if (finished_ || !exited_) return;
  for (const auto& s : streams_) {
    if (s) return;
  }
  finished_ = true;
  timeout_.stop();
  grace_.stop();
  note(pipe_error_);
  if (done_) done_(*this);
}

}  // namespace kin::detail
