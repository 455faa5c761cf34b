// What the kin senders of the one-way benchmarks share: reading the child's two acks.
#pragma once

#include <kin/fd.hpp>
#include <kin/stream.hpp>

#include <cstdint>
#include <functional>
#include <span>
#include <system_error>

#include "bench.hpp"
#include "stream_common.hpp"

namespace kin_bench::stream {

/// The sender's side of the ack protocol on a kin::stream: the first ack ends the warm-up (the
/// clocks start, `target` grows by the `n` timed messages and `pump` sends them), the second
/// ends the run (times and the child's CPU go to `res`, the stream closes).
class kin_ack_reader {
 public:
  void start(kin::stream& s, run_result& res, std::uint64_t& target, long n,
             std::function<void()> pump) {
    auto r = s.read_start([&, n, pump = std::move(pump)](std::error_code ec,
                                                         std::span<const std::byte> data,
                                                         std::span<kin::unique_fd>) {
      if (ec) die("kin sender: read failed or EOF before the last ack");
      acks_.feed(data, [&](const std::byte* payload, std::uint32_t len) {
        if (len != seq_size) die("kin sender: bad ack");
        if (++seen_ == 1) {
          t0_ = wall_ns();
          c0_ = cpu_ns();
          target += static_cast<std::uint64_t>(n);
          pump();
          return;
        }
        res.wall_ns = wall_ns() - t0_;
        res.parent_cpu_ns = cpu_ns() - c0_;
        res.child_cpu_ns = load_u64(payload);
        s.close();
      });
    });
    if (!r) die("kin sender: read_start failed");
  }
  /// Dies unless both acks came: the loop must not end before the run does.
  void check_done() const {
    if (seen_ != 2) die("kin sender: the loop ended before the last ack");
  }

 private:
  chunk_parser acks_{64};
  int seen_ = 0;
  std::uint64_t t0_ = 0;
  std::uint64_t c0_ = 0;
};

}  // namespace kin_bench::stream
