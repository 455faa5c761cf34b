// Runs one child to its end on a loop: feeds its input, captures what it writes, enforces the
// timeout and the output limit, and reports once it is reaped and every pipe is done. What
// spawn_sync and exec share.
#pragma once

#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/stream.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kin::detail {

struct run_limits {
  std::chrono::milliseconds timeout{0};
  int kill_signal = SIGTERM;
  std::optional<std::chrono::milliseconds> kill_grace;
  std::size_t max_buffer = 0;
  buffer_limit limit = buffer_limit::per_stream;
};

class child_runner {
 public:
  using done_callback = std::function<void(child_runner&)>;

  child_runner(loop& l, run_limits limits, std::string_view input, done_callback done);
  child_runner(const child_runner&) = delete;
  child_runner& operator=(const child_runner&) = delete;

  /// Spawns the child on `l` (the loop given to the constructor, which must not have moved
  /// since) and starts serving it. On failure the result holds the error (and `done` is not
  /// called). If it throws (std::bad_alloc) after the child started, the child is sent SIGKILL
  /// and left to the loop's reaper: run the loop to collect it.
  result<process, spawn_error> start(loop& l, const spawn_options& options);

  [[nodiscard]] bool finished() const noexcept { return finished_; }
  /// True if the child was sent a signal, by the runner (timeout, output limit) or through
  /// process::kill (Node's `killed`).
  [[nodiscard]] bool killed() const noexcept { return signalled_ || killed_by_caller_; }
  /// True if the timeout went off.
  [[nodiscard]] bool timed_out() const noexcept { return timed_out_; }
  /// The loop's implementation, which stays put when the kin::loop is moved.
  [[nodiscard]] loop_impl& owner_loop() const noexcept { return impl_; }
  spawn_sync_result& outcome() noexcept { return res_; }

 private:
  void serve_input(stream& s);
  void capture(int fd, std::span<const std::byte> data);
  void end_stream(int fd) noexcept;
  void exited(std::error_code ec, int status, int sig) noexcept;
  void kill() noexcept;
  void note(std::error_code ec) noexcept;
  void note_pipe(std::error_code ec) noexcept;
  void check_done();

  loop_impl& impl_;
  run_limits limits_;
  std::vector<std::byte> input_;
  done_callback done_;
  process_state* child_ = nullptr;  // valid until exited_
  std::vector<std::unique_ptr<stream>> streams_;
  timer timeout_;
  timer grace_;
  spawn_sync_result res_;
  // A pipe's error (EPIPE on the input, a read error) is reported only when nothing else went
  // wrong: a timeout or an overflow that follows it is what the caller needs to know (as
  // Node's spawnSync).
  std::error_code pipe_error_;
  std::size_t captured_ = 0;  // all streams together
  bool exited_ = false;
  bool killed_ = false;
  bool signalled_ = false;
  bool killed_by_caller_ = false;
  bool timed_out_ = false;
  bool finished_ = false;
};

}  // namespace kin::detail
