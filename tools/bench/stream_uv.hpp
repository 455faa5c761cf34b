// libuv helpers of the stream benchmarks: error checks, handle casts, writes of a small frame
// with their own copy, and priming libuv's process-wide descriptors before the leak check.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <span>

#include "bench.hpp"
#include "stream_common.hpp"

namespace kin_bench::stream {

inline void check_uv(int rc, const char* what) {
  if (rc != 0) {
    std::fprintf(stderr, "%s: %s\n", what, uv_strerror(rc));
    die("libuv call failed");
  }
}

inline uv_handle_t* as_handle(uv_pipe_t* p) noexcept { return reinterpret_cast<uv_handle_t*>(p); }
inline uv_stream_t* as_stream(uv_pipe_t* p) noexcept { return reinterpret_cast<uv_stream_t*>(p); }

inline uv_buf_t buf_of(std::span<std::byte> s) noexcept {
  return uv_buf_init(reinterpret_cast<char*>(s.data()), static_cast<unsigned>(s.size()));
}

/// A write request with its own copy of a small frame (acks, ping-pong echoes), freed by its
/// callback, as a libuv user copies a message whose buffer does not outlive the call.
struct uv_copy_write {
  static constexpr std::size_t capacity = 256;
  uv_write_t req;
  std::byte data[capacity];
};

inline void uv_free_copy_write(uv_write_t* req, int status) {
  if (status != 0) die("libuv: write failed");
  delete reinterpret_cast<uv_copy_write*>(req);
}

inline void uv_send_copy(uv_pipe_t* pipe, std::span<const std::byte> bytes) {
  if (bytes.size() > uv_copy_write::capacity) die("uv_send_copy: frame too large");
  auto* w = new uv_copy_write;
  std::memcpy(w->data, bytes.data(), bytes.size());
  uv_buf_t b = buf_of({w->data, bytes.size()});
  check_uv(uv_write(&w->req, as_stream(pipe), &b, 1, uv_free_copy_write), "uv_write");
}

/// libuv opens a process-wide pipe (its signal lock) with the first loop and never closes it:
/// open it before counting descriptors, so the leak check sees only what the runs leave.
inline void prime_libuv() {
  uv_loop_t l;
  check_uv(uv_loop_init(&l), "uv_loop_init");
  check_uv(uv_loop_close(&l), "uv_loop_close");
}

/// Prints the header line of a benchmark: its parameters and the load average.
inline void print_header(const char* what, long runs, const std::string& pin) {
  std::printf("# %s: %ld runs, libuv %s, pin %s, loadavg at start: ", what, runs,
              uv_version_string(), pin.c_str());
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    char line[128] = {};
    if (std::fgets(line, sizeof line, f) != nullptr) std::fputs(line, stdout);
    std::fclose(f);
  }
}

}  // namespace kin_bench::stream
