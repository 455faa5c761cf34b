// Benchmark: one-way throughput from a parent to a forked child over an AF_UNIX socketpair,
// kin::stream against a raw blocking loop, a raw epoll loop and libuv 1.44, with 64 B, 1 KiB and
// 64 KiB messages, each sent with one write call (kin's queue may batch them; the others send
// one message per system call or per uv_write).
//
// The parent sends a warm-up phase (a tenth of the count), the child acks it, then the parent
// sends the timed messages and the child acks the last one with the CPU time it spent since
// the first ack. The clock runs from the first timed write to the final ack.
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/stream.hpp>

#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

#include "bench.hpp"
#include "stream_common.hpp"
#include "stream_kin.hpp"
#include "stream_uv.hpp"

namespace {

using kin_bench::cpu_ns;
using kin_bench::die;
using kin_bench::wall_ns;
using namespace kin_bench::stream;

/// The receive buffer: at least 256 KiB and two frames.
std::size_t receive_capacity(std::size_t frame) {
  return std::max<std::size_t>(256 * 1024, 2 * frame);
}

/// The child's side of every implementation: checks each frame's length and sequence number,
/// acks the warm-up phase and then the last frame (with its CPU time since the first ack).
struct receiver_check {
  std::uint32_t size;
  long warm;
  long total;
  long got = 0;
  std::uint64_t cpu0 = 0;

  /// Returns the ack to send after this frame, if any: 1 for the warm-up ack, 2 for the last.
  int on_frame(const std::byte* p, std::uint32_t len) {
    if (len != size || load_u64(p) != static_cast<std::uint64_t>(got)) {
      die("one-way: a frame with the wrong length or sequence number");
    }
    ++got;
    if (got == warm) {
      cpu0 = cpu_ns();
      return 1;
    }
    return got == total ? 2 : 0;
  }
  std::uint64_t ack_value(int which) const { return which == 1 ? 0 : cpu_ns() - cpu0; }
};

// ---- kin ------------------------------------------------------------------------------------

int kin_receiver(int fd, std::uint32_t size, long warm, long n) {
  kin::loop loop;
  kin::stream s(loop);
  if (!s.open(kin::unique_fd(fd))) die("kin receiver: open failed");
  chunk_parser parser(receive_capacity(header_size + size));
  receiver_check check{size, warm, warm + n};
  auto r = s.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (ec == kin::errc::eof) {
          s.close();
          return;
        }
        if (ec) die("kin receiver: read failed");
        parser.feed(data, [&](const std::byte* p, std::uint32_t len) {
          if (const int ack = check.on_frame(p, len); ack != 0) {
            s.write(ack_frame(check.ack_value(ack)).span());
          }
        });
      });
  if (!r) die("kin receiver: read_start failed");
  loop.run();
  if (check.got != warm + n) die("kin receiver: wrong frame count");
  return 0;
}

run_result run_kin(std::uint32_t size, long n) {
  const long warm = warmup_of(n, 1);
  const peer p = fork_peer([&](int fd) { return kin_receiver(fd, size, warm, n); });
  run_result res;
  {
    kin::loop loop;
    kin::stream s(loop);
    if (!s.open(kin::unique_fd(p.fd))) die("kin sender: open failed");
    std::vector<std::byte> frame = make_frame(size);
    const std::span<const std::byte> bytes(frame);
    std::uint64_t seq = 0;
    std::uint64_t target = static_cast<std::uint64_t>(warm);
    // One write per message until the queue is above its high water mark; on_drain resumes.
    auto pump = [&] {
      while (seq < target) {
        put_frame(frame.data(), size, seq++);
        if (!s.write(bytes)) return;
      }
    };
    s.on_drain(pump);
    kin_ack_reader acks;
    acks.start(s, res, target, n, pump);
    pump();
    loop.run();
    acks.check_done();
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

int raw_receiver(int fd, bool nonblocking, std::uint32_t size, long warm, long n) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity(header_size + size));
  receiver_check check{size, warm, warm + n};
  int pending_ack = 0;
  auto on_frame = [&](const std::byte* p, std::uint32_t len) {
    if (const int ack = check.on_frame(p, len); ack != 0) pending_ack = ack;
  };
  while (!c.at_eof()) {
    c.receive(buf, on_frame);
    if (pending_ack != 0) {
      const ack_frame a(check.ack_value(pending_ack));
      c.send(a.bytes, sizeof a.bytes);
      pending_ack = 0;
    }
  }
  if (check.got != warm + n) die("raw receiver: wrong frame count");
  return 0;
}

run_result run_raw(bool nonblocking, std::uint32_t size, long n) {
  const long warm = warmup_of(n, 1);
  const peer p = fork_peer([&](int fd) { return raw_receiver(fd, nonblocking, size, warm, n); });
  run_result res;
  {
    raw_conn c(p.fd, nonblocking);
    std::vector<std::byte> frame = make_frame(size);
    frame_buffer acks(4096);
    std::uint64_t seq = 0;
    for (long i = 0; i < warm; ++i) {
      put_frame(frame.data(), size, seq++);
      c.send(frame.data(), frame.size());
    }
    (void)c.read_ack(acks);
    const std::uint64_t t0 = wall_ns();
    const std::uint64_t c0 = cpu_ns();
    for (long i = 0; i < n; ++i) {
      put_frame(frame.data(), size, seq++);
      c.send(frame.data(), frame.size());
    }
    res.child_cpu_ns = c.read_ack(acks);
    res.wall_ns = wall_ns() - t0;
    res.parent_cpu_ns = cpu_ns() - c0;
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

struct uv_receiver {
  uv_loop_t loop;
  uv_pipe_t pipe;
  frame_buffer buf;
  receiver_check check;
};

void uv_receiver_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  auto* st = static_cast<uv_receiver*>(h->data);
  *b = buf_of(st->buf.free_space());
}

void uv_receiver_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* st = static_cast<uv_receiver*>(s->data);
  if (nread < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    return;
  }
  st->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (const int ack = st->check.on_frame(p, len); ack != 0) {
      uv_send_copy(&st->pipe, ack_frame(st->check.ack_value(ack)).span());
    }
  });
}

int uv_receiver_main(int fd, std::uint32_t size, long warm, long n) {
  uv_receiver st{
      {}, {}, frame_buffer(receive_capacity(header_size + size)), {size, warm, warm + n}};
  check_uv(uv_loop_init(&st.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&st.loop, &st.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&st.pipe, fd), "uv_pipe_open");
  st.pipe.data = &st;
  check_uv(uv_read_start(as_stream(&st.pipe), uv_receiver_alloc, uv_receiver_read),
           "uv_read_start");
  uv_run(&st.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&st.loop), "uv_loop_close");
  if (st.check.got != warm + n) die("libuv receiver: wrong frame count");
  return 0;
}

/// The sender keeps at most about 1 MiB (and at least 2 writes) queued in libuv, each message
/// one uv_write with its own request and its own buffer from a ring, like perf-ipc's uv_ipc.
struct uv_sender {
  uv_loop_t loop;
  uv_pipe_t pipe;
  std::uint32_t size = 0;
  std::vector<std::vector<std::byte>> ring;
  std::vector<uv_write_t> reqs;
  std::size_t ring_pos = 0;
  std::size_t inflight = 0;
  bool pumping = false;
  std::uint64_t seq = 0;
  std::uint64_t target = 0;
  long n = 0;
  frame_buffer acks{4096};
  int acks_seen = 0;
  std::uint64_t t0 = 0, c0 = 0;
  run_result* res = nullptr;
};

void uv_sender_pump(uv_sender* st);

void uv_sender_written(uv_write_t* req, int status) {
  if (status != 0) die("libuv: write failed");
  auto* st = static_cast<uv_sender*>(req->data);
  --st->inflight;
  if (!st->pumping) uv_sender_pump(st);
}

void uv_sender_pump(uv_sender* st) {
  st->pumping = true;
  while (st->seq < st->target && st->inflight < st->ring.size()) {
    const std::size_t slot = st->ring_pos++ % st->ring.size();
    std::vector<std::byte>& b = st->ring[slot];
    put_frame(b.data(), st->size, st->seq++);
    uv_buf_t ub = buf_of(b);
    st->reqs[slot].data = st;
    check_uv(uv_write(&st->reqs[slot], as_stream(&st->pipe), &ub, 1, uv_sender_written),
             "uv_write");
    ++st->inflight;
  }
  st->pumping = false;
}

void uv_sender_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  auto* st = static_cast<uv_sender*>(h->data);
  *b = buf_of(st->acks.free_space());
}

void uv_sender_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* st = static_cast<uv_sender*>(s->data);
  if (nread < 0) die("libuv sender: EOF before the last ack");
  st->acks.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (len != seq_size) die("libuv sender: bad ack");
    if (++st->acks_seen == 1) {
      st->t0 = wall_ns();
      st->c0 = cpu_ns();
      st->target += static_cast<std::uint64_t>(st->n);
      uv_sender_pump(st);
      return;
    }
    st->res->wall_ns = wall_ns() - st->t0;
    st->res->parent_cpu_ns = cpu_ns() - st->c0;
    st->res->child_cpu_ns = load_u64(p);
    uv_close(as_handle(&st->pipe), nullptr);
  });
}

run_result run_libuv(std::uint32_t size, long n) {
  const long warm = warmup_of(n, 1);
  const peer p = fork_peer([&](int fd) { return uv_receiver_main(fd, size, warm, n); });
  run_result res;
  {
    uv_sender st;
    st.size = size;
    st.n = n;
    st.res = &res;
    st.target = static_cast<std::uint64_t>(warm);
    const std::size_t frame = header_size + size;
    const std::size_t k = std::clamp<std::size_t>((1u << 20) / frame, 2, 65536);
    st.ring.assign(k, make_frame(size));
    st.reqs.resize(k);
    check_uv(uv_loop_init(&st.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&st.loop, &st.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&st.pipe, p.fd), "uv_pipe_open");
    st.pipe.data = &st;
    check_uv(uv_read_start(as_stream(&st.pipe), uv_sender_alloc, uv_sender_read), "uv_read_start");
    uv_sender_pump(&st);
    uv_run(&st.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&st.loop), "uv_loop_close");
    if (st.acks_seen != 2) die("libuv sender: the loop ended before the last ack");
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  common_options o;
  long messages = 0;
  std::string sizes = "all";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--messages", &messages},
       {"--size", nullptr, &sizes},
       {"--only", nullptr, &o.only},
       {"--pin", nullptr, &o.pin}},
      "[--runs N (5)] [--size 64|1024|65536|all (all)] [--messages N (per size: 200000, "
      "200000, 20000)] [--only kin|raw_block|raw_epoll|libuv (that one alone, no warm-up run, "
      "no BENCH line)] [--pin none|same|split (none)]");
  const char* suffix = apply_pin(o.pin);
  prime_libuv();
  const int fds_before = open_fd_count();

  struct size_case {
    std::uint32_t size;
    const char* label;
    long default_count;
  };
  const size_case all[] = {{64, "64", 200000}, {1024, "1k", 200000}, {65536, "64k", 20000}};
  print_header("stream_oneway", o.runs, o.pin);
  bool any = false;
  for (const size_case& sc : all) {
    if (sizes != "all" && sizes != std::to_string(sc.size)) continue;
    any = true;
    const std::uint32_t size = sc.size;
    const double mb = static_cast<double>(size) / 1e6;
    bench_case c;
    c.name = std::string("stream_oneway_") + sc.label + suffix;
    // Rates: messages per second, or payload MB (1e6 bytes) per second for 64 KiB.
    if (size >= 65536) {
      c.unit = "MB/s";
      c.metric = [mb](const run_result& r) { return per_second(r) * mb; };
    } else {
      c.unit = "msgs/s";
      c.metric = per_second;
    }
    c.count = messages > 0 ? messages : sc.default_count;
    c.impls = {{impl::kin, [size](long n) { return run_kin(size, n); }},
               {impl::raw_block, [size](long n) { return run_raw(false, size, n); }},
               {impl::raw_epoll, [size](long n) { return run_raw(true, size, n); }},
               {impl::libuv, [size](long n) { return run_libuv(size, n); }}};
    run_case(c, o.runs, o.only);
  }
  if (!any) die("--size is 64, 1024, 65536 or all");
  if (open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
