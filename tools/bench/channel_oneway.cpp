// Benchmark: one-way message throughput from a parent to its child over an AF_UNIX socketpair,
// for small messages and for 64 KiB ones: kin::channel with the native codec (64-byte and
// 65536-byte messages) and with the Node codec ({"i":N}, and {"s":"<65536 x>","i":N}), against
// a raw epoll loop that batches small frames, a raw blocking loop and libuv 1.44 that send one
// frame per call (u32 length + the same payloads as native), and Node 20's process.send ({i} and
// {i, s: 64 KiB string}, channel_node.js).
//
// The parent sends a warm-up phase (a tenth of the count), the child acks it, then the parent
// sends the timed messages and the child acks the last one with the CPU time it spent since
// the first ack. The clock runs from the first timed send to the final ack. The child checks
// every message's length and sequence number, and for a sample (every 1024th small message,
// every 64th large one) the whole content.
#include <kin/channel.hpp>
#include <kin/loop.hpp>

#include <uv.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "bench.hpp"
#include "channel_common.hpp"
#include "stream_common.hpp"
#include "stream_uv.hpp"

namespace {

using namespace kin_bench::channel;
using kin_bench::stream::ack_frame;
using kin_bench::stream::frame_buffer;
using kin_bench::stream::header_size;
using kin_bench::stream::load_u64;
using kin_bench::stream::peer;
using kin_bench::stream::put_frame;
using kin_bench::stream::raw_conn;
using kin_bench::stream::seq_size;
using kin_bench::stream::warmup_of;

constexpr char filler = 'x';

/// The two message sizes: `small` (64-byte payloads, {"i":N} in Node mode) and `large` (65536
/// bytes, a 65536-character string in Node mode).
struct size_kind {
  bool large;
  [[nodiscard]] std::size_t payload() const { return large ? 65536 : 64; }
  [[nodiscard]] const char* label() const { return large ? "64k" : "small"; }
  /// Every how many messages the whole content is checked.
  [[nodiscard]] std::uint64_t sample() const { return large ? 64 : 1024; }
};

size_kind parse_kind(std::string_view s) {
  if (s == "small") return {false};
  if (s == "64k") return {true};
  die("a size is small or 64k");
}

/// The kin messages of one codec and size: how the sender makes message `seq` and how the
/// receiver checks it.
class kin_messages {
 public:
  kin_messages(bool node, size_kind kind) : node_(node), kind_(kind) {
    if (!node_) {
      base_.assign(kind_.payload(), filler);
    } else if (kind_.large) {
      // The string first, so the number (whose length varies) is appended at the end.
      base_ = R"({"s":")";
      base_.append(kind_.payload(), filler);
      base_ += R"(","i":)";
    }
  }

  void make(std::string& msg, std::uint64_t seq) const {
    if (!node_) {
      if (msg.size() != base_.size()) msg = base_;
      put_u64(msg, seq);
    } else if (!kind_.large) {
      json_object(msg, {{"i", seq}});
    } else {
      if (msg.size() < base_.size()) msg = base_;
      msg.resize(base_.size());
      char num[24];
      msg.append(num, std::to_chars(num, num + sizeof num, seq).ptr);
      msg.push_back('}');
    }
  }

  void check(std::string_view m, std::uint64_t seq) const {
    const bool sample = seq % kind_.sample() == 0;
    if (!node_) {
      if (m.size() != base_.size() || get_u64(m) != seq) die("one-way: a wrong native message");
      if (sample && m.substr(8) != std::string_view(base_).substr(8)) {
        die("one-way: a native message with the wrong content");
      }
    } else if (!kind_.large) {
      if (json_uint(m, "i") != static_cast<long long>(seq)) die("one-way: a wrong JSON message");
    } else {
      std::uint64_t v = 0;
      const char* first = m.data() + std::min(m.size(), base_.size());
      auto [end, ec] = std::from_chars(first, m.data() + m.size(), v);
      if (m.size() <= base_.size() || ec != std::errc() || v != seq ||
          end != m.data() + m.size() - 1 || m.back() != '}') {
        die("one-way: a wrong 64 KiB JSON message");
      }
      if (sample && m.compare(0, base_.size(), base_) != 0) {
        die("one-way: a 64 KiB JSON message with the wrong content");
      }
    }
  }

 private:
  bool node_;
  size_kind kind_;
  std::string base_;
};

// ---- kin ------------------------------------------------------------------------------------

/// An ack: 8 bytes (0, or the CPU time) natively, {"ack":0} or {"ack":1,"cpu":N} in Node mode.
void make_ack(std::string& out, bool node, int which, std::uint64_t cpu) {
  if (node) {
    if (which == 1) {
      json_object(out, {{"ack", 0}});
    } else {
      json_object(out, {{"ack", 1}, {"cpu", cpu}});
    }
  } else {
    out.assign(8, '\0');
    put_u64(out, which == 1 ? 0 : cpu);
  }
}

int kin_child(std::string_view codec, size_kind kind, long warm, long total) {
  kin::loop loop;
  auto ch = open_child_channel(loop, codec);
  const bool node = codec == "node";
  const kin_messages messages(node, kind);
  long got = 0;
  std::uint64_t cpu0 = 0;
  std::string ack;
  ch->on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (!handles.empty()) die("kin receiver: a message with handles");
    messages.check(m, static_cast<std::uint64_t>(got));
    ++got;
    if (got == warm) {
      cpu0 = cpu_ns();
      make_ack(ack, node, 1, 0);
      ch->send(ack);
    } else if (got == total) {
      make_ack(ack, node, 2, cpu_ns() - cpu0);
      ch->send(ack);
    }
  });
  loop.run();
  if (got != total) die("kin receiver: wrong message count");
  return 0;
}

run_result run_kin(kin::channel_codec codec, size_kind kind, long n) {
  const long warm = warmup_of(n, 1);
  const bool node = codec == kin::channel_codec::node;
  run_result res;
  {
    kin::loop loop;
    kin_peer f = fork_kin_child(
        loop, codec, {"oneway", kind.label(), std::to_string(warm), std::to_string(warm + n)});
    kin::channel& ch = *f.channel;
    const kin_messages messages(node, kind);
    std::string msg;
    std::uint64_t seq = 0;
    auto target = static_cast<std::uint64_t>(warm);
    // One send per message until send() says the queue is above its high-water mark (the
    // default, 128 KiB); on_drain resumes.
    auto pump = [&] {
      while (seq < target) {
        messages.make(msg, seq++);
        if (!ch.send(msg)) return;
      }
    };
    ch.on_drain(pump);
    int acks = 0;
    bool finished = false;
    std::uint64_t t0 = 0, c0 = 0;
    watch_kin_channel(ch, finished);
    ch.on_message([&](std::string m, std::vector<kin::any_handle>) {
      if (++acks == 1) {
        t0 = wall_ns();
        c0 = cpu_ns();
        target += static_cast<std::uint64_t>(n);
        pump();
        return;
      }
      res.wall_ns = wall_ns() - t0;
      res.parent_cpu_ns = cpu_ns() - c0;
      const long long cpu = node ? json_uint(m, "cpu") : static_cast<long long>(get_u64(m));
      if (cpu < 0 || seq != target) die("kin sender: a wrong last ack");
      res.child_cpu_ns = static_cast<std::uint64_t>(cpu);
      finished = true;
      ch.close();
    });
    pump();
    loop.run();
    f.reap();
    if (!finished) die("kin sender: the loop ended before the last ack");
  }
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

/// The raw epoll sender's batching, what a hand-written loop with an output buffer does: a
/// frame smaller than the buffer is copied into it (the caller's message does not outlive the
/// call); the buffer is written with one write() (finished after EAGAIN through EPOLLOUT) when
/// the next frame would not fit, and when the sender has nothing more to send (the end of a
/// phase). A frame as large as the buffer is written straight from the caller's memory, after
/// what was buffered.
class batch_writer {
 public:
  static constexpr std::size_t capacity = 64 * 1024;
  explicit batch_writer(raw_conn& c) : c_(c), buf_(capacity) {}
  void add(const std::byte* frame, std::size_t n) {
    if (len_ + n > capacity) flush();
    if (n >= capacity) {
      c_.send(frame, n);
      return;
    }
    std::memcpy(buf_.data() + len_, frame, n);
    len_ += n;
  }
  void flush() {
    if (len_ != 0) c_.send(buf_.data(), len_);
    len_ = 0;
  }

 private:
  raw_conn& c_;
  std::vector<std::byte> buf_;
  std::size_t len_ = 0;
};

/// The raw and libuv receivers' check of each frame; returns the ack to send after it, if any
/// (1 after the warm-up phase, 2 after the last frame).
struct frame_check {
  size_kind kind;
  long warm;
  long total;
  long got = 0;
  std::uint64_t cpu0 = 0;

  int on_frame(const std::byte* p, std::uint32_t len) {
    if (len != kind.payload() || load_u64(p) != static_cast<std::uint64_t>(got)) {
      die("one-way: a frame with the wrong length or sequence number");
    }
    if (static_cast<std::uint64_t>(got) % kind.sample() == 0) {
      static const std::vector<std::byte> expected(65536, std::byte{filler});
      if (std::memcmp(p + seq_size, expected.data(), len - seq_size) != 0) {
        die("one-way: a frame with the wrong content");
      }
    }
    ++got;
    if (got == warm) {
      cpu0 = cpu_ns();
      return 1;
    }
    return got == total ? 2 : 0;
  }
  [[nodiscard]] std::uint64_t ack_value(int which) const {
    return which == 1 ? 0 : cpu_ns() - cpu0;
  }
};

std::size_t receive_capacity(size_kind kind) {
  return std::max<std::size_t>(256 * 1024, 2 * (header_size + kind.payload()));
}

int raw_receiver(int fd, bool nonblocking, size_kind kind, long warm, long n) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity(kind));
  frame_check check{kind, warm, warm + n};
  int pending_ack = 0;
  while (!c.at_eof()) {
    c.receive(buf, [&](const std::byte* p, std::uint32_t len) {
      if (const int a = check.on_frame(p, len); a != 0) pending_ack = a;
    });
    if (pending_ack != 0) {
      const ack_frame a(check.ack_value(pending_ack));
      c.send(a.bytes, sizeof a.bytes);
      pending_ack = 0;
    }
  }
  if (check.got != warm + n) die("raw receiver: wrong frame count");
  return 0;
}

// raw_block (blocking, one write per frame), raw_epoll (non-blocking, frames gathered into
// 64 KiB writes) or raw_epoll_1 (non-blocking, one write per frame: perf-ipc.md's
// raw.epoll.tput.64).
run_result run_raw(bool nonblocking, bool batched, size_kind kind, long n) {
  const long warm = warmup_of(n, 1);
  const peer p = kin_bench::stream::fork_peer(
      [&](int fd) { return raw_receiver(fd, nonblocking, kind, warm, n); });
  run_result res;
  {
    raw_conn c(p.fd, nonblocking);
    batch_writer batch(c);
    frame_buffer acks(4096);
    std::vector<std::byte> frame(header_size + kind.payload(), std::byte{filler});
    std::uint64_t seq = 0;
    auto send_phase = [&](long count) {
      for (long i = 0; i < count; ++i) {
        put_frame(frame.data(), static_cast<std::uint32_t>(kind.payload()), seq++);
        if (batched) {
          batch.add(frame.data(), frame.size());
        } else {
          c.send(frame.data(), frame.size());
        }
      }
      batch.flush();
    };
    send_phase(warm);
    (void)c.read_ack(acks);
    const std::uint64_t t0 = wall_ns();
    const std::uint64_t c0 = cpu_ns();
    send_phase(n);
    res.child_cpu_ns = c.read_ack(acks);
    res.wall_ns = wall_ns() - t0;
    res.parent_cpu_ns = cpu_ns() - c0;
  }
  kin_bench::stream::reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

using kin_bench::stream::as_handle;
using kin_bench::stream::as_stream;
using kin_bench::stream::buf_of;
using kin_bench::stream::check_uv;
using kin_bench::stream::uv_send_copy;

struct uv_receiver {
  uv_loop_t loop;
  uv_pipe_t pipe;
  frame_buffer buf;
  frame_check check;
};

void uv_receiver_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_receiver*>(h->data)->buf.free_space());
}

void uv_receiver_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_receiver*>(s->data);
  if (nread < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    return;
  }
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (const int a = u->check.on_frame(p, len); a != 0) {
      uv_send_copy(&u->pipe, ack_frame(u->check.ack_value(a)).span());
    }
  });
}

int uv_receiver_main(int fd, size_kind kind, long warm, long n) {
  uv_receiver u{{}, {}, frame_buffer(receive_capacity(kind)), {kind, warm, warm + n}};
  check_uv(uv_loop_init(&u.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&u.pipe, fd), "uv_pipe_open");
  u.pipe.data = &u;
  check_uv(uv_read_start(as_stream(&u.pipe), uv_receiver_alloc, uv_receiver_read), "uv_read_start");
  uv_run(&u.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&u.loop), "uv_loop_close");
  if (u.check.got != warm + n) die("libuv receiver: wrong frame count");
  return 0;
}

/// One uv_write per frame, each with its own request and its own buffer from a ring; at most
/// about 1 MiB (and at least 2 writes) in flight, as perf-ipc's uv_ipc.
struct uv_sender {
  uv_loop_t loop;
  uv_pipe_t pipe;
  std::size_t payload = 0;
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

void uv_sender_pump(uv_sender* u);

void uv_sender_written(uv_write_t* req, int status) {
  if (status != 0) die("libuv: write failed");
  auto* u = static_cast<uv_sender*>(req->data);
  --u->inflight;
  if (!u->pumping) uv_sender_pump(u);
}

void uv_sender_pump(uv_sender* u) {
  u->pumping = true;
  while (u->seq < u->target && u->inflight < u->ring.size()) {
    const std::size_t slot = u->ring_pos++ % u->ring.size();
    std::vector<std::byte>& b = u->ring[slot];
    put_frame(b.data(), static_cast<std::uint32_t>(u->payload), u->seq++);
    uv_buf_t ub = buf_of(b);
    u->reqs[slot].data = u;
    check_uv(uv_write(&u->reqs[slot], as_stream(&u->pipe), &ub, 1, uv_sender_written), "uv_write");
    ++u->inflight;
  }
  u->pumping = false;
}

void uv_sender_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_sender*>(h->data)->acks.free_space());
}

void uv_sender_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_sender*>(s->data);
  if (nread < 0) die("libuv sender: EOF before the last ack");
  u->acks.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (len != seq_size) die("libuv sender: bad ack");
    if (++u->acks_seen == 1) {
      u->t0 = wall_ns();
      u->c0 = cpu_ns();
      u->target += static_cast<std::uint64_t>(u->n);
      uv_sender_pump(u);
      return;
    }
    u->res->wall_ns = wall_ns() - u->t0;
    u->res->parent_cpu_ns = cpu_ns() - u->c0;
    u->res->child_cpu_ns = load_u64(p);
    uv_close(as_handle(&u->pipe), nullptr);
  });
}

run_result run_libuv(size_kind kind, long n) {
  const long warm = warmup_of(n, 1);
  const peer p =
      kin_bench::stream::fork_peer([&](int fd) { return uv_receiver_main(fd, kind, warm, n); });
  run_result res;
  {
    uv_sender u;
    u.payload = kind.payload();
    u.n = n;
    u.res = &res;
    u.target = static_cast<std::uint64_t>(warm);
    const std::size_t frame = header_size + kind.payload();
    const std::size_t k = std::clamp<std::size_t>((1u << 20) / frame, 2, 65536);
    u.ring.assign(k, std::vector<std::byte>(frame, std::byte{filler}));
    u.reqs.resize(k);
    check_uv(uv_loop_init(&u.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.pipe, p.fd), "uv_pipe_open");
    u.pipe.data = &u;
    check_uv(uv_read_start(as_stream(&u.pipe), uv_sender_alloc, uv_sender_read), "uv_read_start");
    uv_sender_pump(&u);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&u.loop), "uv_loop_close");
    if (u.acks_seen != 2) die("libuv sender: the loop ended before the last ack");
  }
  kin_bench::stream::reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 7 && std::string_view(argv[1]) == "--child" &&
      std::string_view(argv[3]) == "oneway") {
    return kin_child(argv[2], parse_kind(argv[4]), std::stol(argv[5]), std::stol(argv[6]));
  }
  common_options o;
  long small_messages = 2000000;
  long large_messages = 20000;
  std::string sizes = "all";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--size", nullptr, &sizes},
       {"--messages", &small_messages},
       {"--large-messages", &large_messages},
       {"--only", nullptr, &o.only},
       {"--skip", nullptr, &o.skip},
       {"--pin", nullptr, &o.pin},
       {"--spawn", nullptr, &o.spawn}},
      "[--runs N (5)] [--size small|64k|all (all)] [--messages N (small messages per run of "
      "kin, kin_node and raw_epoll: 2000000; raw_block, libuv and node send a tenth)] "
      "[--large-messages N (64 KiB messages per run: 20000; node sends a tenth)] [--only "
      "kin|kin_node|raw_block|raw_epoll|raw_epoll_1|libuv|node (that one alone, no warm-up run, no "
      "BENCH "
      "line)] [--skip impl,impl (e.g. kin_node)] [--pin none|same (none)] [--spawn kin|fork (kin: "
      "kin::fork; fork: fork and execv by hand, for valgrind)]");
  if (sizes != "all" && sizes != "small" && sizes != "64k") die("--size is small, 64k or all");
  const char* suffix = apply_pin(o.pin);
  if (o.spawn != "kin" && o.spawn != "fork") die("--spawn is kin or fork");
  spawn_by_hand = o.spawn == "fork";
  kin_bench::stream::prime_libuv();
  const int fds_before = kin_bench::open_fd_count();
  print_header("channel_oneway", o);
  std::printf("# libuv %s\n", uv_version_string());

  for (const size_kind kind : {size_kind{false}, size_kind{true}}) {
    if (sizes != "all" && sizes != kind.label()) continue;
    channel_case c;
    c.name = std::string("channel_oneway_") + kind.label() + suffix;
    const long n = kind.large ? large_messages : small_messages;
    // The peers that send one message per system call are about ten times slower with small
    // messages (and Node with large ones too): they send a tenth, so that every run lasts
    // about as long.
    const long slow = std::max(1L, n / 10);
    if (kind.large) {
      c.unit = "MB/s";
      c.metric = [](const run_result& r) { return kin_bench::stream::per_second(r) * 0.065536; };
    } else {
      c.unit = "msgs/s";
      c.metric = kin_bench::stream::per_second;
    }
    auto node_run = [kind](long k) {
      return run_node({"oneway", kind.label(), std::to_string(k), std::to_string(warmup_of(k, 1))});
    };
    c.impls = {
        {impl::kin, n, [kind](long k) { return run_kin(kin::channel_codec::native, kind, k); }},
        {impl::kin_node, n, [kind](long k) { return run_kin(kin::channel_codec::node, kind, k); }},
        {impl::raw_block, kind.large ? n : slow,
         [kind](long k) { return run_raw(false, false, kind, k); }},
        {impl::raw_epoll, n, [kind](long k) { return run_raw(true, true, kind, k); }},
        {impl::raw_epoll_1, kind.large ? n : slow,
         [kind](long k) { return run_raw(true, false, kind, k); }},
        {impl::libuv, kind.large ? n : slow, [kind](long k) { return run_libuv(kind, k); }},
        {impl::node, slow, node_run}};
    c.comparisons = {{impl::kin, impl::raw_epoll},      {impl::kin, impl::raw_epoll_1},
                     {impl::kin, impl::raw_block},      {impl::kin, impl::libuv},
                     {impl::kin_node, impl::node},      {impl::kin_node, impl::raw_epoll},
                     {impl::kin_node, impl::raw_block}, {impl::node, impl::raw_block},
                     {impl::libuv, impl::raw_block},    {impl::raw_epoll, impl::raw_block}};
    run_case(c, o);
  }
  if (kin_bench::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
