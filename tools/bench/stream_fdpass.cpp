// Benchmark: descriptor passing from a parent to a forked child over an AF_UNIX socketpair,
// kin::stream against a raw blocking loop, a raw epoll loop and libuv 1.44 (uv_write2), with 1
// and with 16 descriptors per message, in descriptors per second.
//
// Each message is a 12-byte frame (u32 length, u64 sequence number) with SCM_RIGHTS carrying
// the descriptors: close-on-exec duplicates of one pipe's write end, made by the sender for
// each message (kin's write takes ownership of the descriptors it sends and closes them once
// sent, so every implementation dups per message and closes after sending). The child checks
// that each frame brought its descriptors and closes every one. libuv sends one handle per
// uv_write2, so it has no 16-descriptor figure.
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/stream.hpp>

#include <fcntl.h>
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

constexpr std::size_t frame_size = ack_frame_size;  // header + sequence number
constexpr std::size_t receive_capacity = 64 * 1024;
/// The senders that queue (kin, libuv) keep at most this many descriptors queued in their
/// process (each queued message holds its duplicates until it is sent).
constexpr long queued_fd_limit = 1024;

/// How libuv gets a descriptor to send: a duplicate wrapped in a fresh uv_pipe_t per message
/// (`dup`, the same work as the others), or one uv_pipe_t on the pipe end sent every time
/// (`same`, perf-ipc's uv figure: no dup, no close).
bool uv_dup_per_message = true;

/// The child's check, the same for every implementation: frames arrive in order, and after
/// each read the descriptors received so far are exactly `nfds` per frame begun (a frame's
/// descriptors come with the read that holds its first byte). Every descriptor is closed by
/// the caller as it arrives.
struct fd_check {
  int nfds;
  long warm;
  long total;
  long frames = 0;
  std::uint64_t bytes = 0;
  std::uint64_t fds = 0;
  std::uint64_t cpu0 = 0;

  /// Returns the ack to send after this frame, if any: 1 for the warm-up ack, 2 for the last.
  int on_frame(const std::byte* p, std::uint32_t len) {
    if (len != seq_size || load_u64(p) != static_cast<std::uint64_t>(frames)) {
      die("fd passing: a frame with the wrong length or sequence number");
    }
    ++frames;
    if (frames == warm) {
      cpu0 = cpu_ns();
      return 1;
    }
    return frames == total ? 2 : 0;
  }
  void after_read(std::size_t got_bytes, std::size_t got_fds) {
    bytes += got_bytes;
    fds += got_fds;
    const std::uint64_t begun = (bytes + frame_size - 1) / frame_size;
    if (fds != begun * static_cast<std::uint64_t>(nfds)) {
      die("fd passing: a frame arrived without its descriptors");
    }
  }
  std::uint64_t ack_value(int which) const { return which == 1 ? 0 : cpu_ns() - cpu0; }
};

/// The pipe whose write end every message sends duplicates of (made in the parent after
/// fork(), so the child never holds it).
struct pipe_pair {
  pipe_pair() {
    if (::pipe2(fd, O_CLOEXEC) != 0) die("pipe2 failed");
  }
  pipe_pair(const pipe_pair&) = delete;
  pipe_pair& operator=(const pipe_pair&) = delete;
  ~pipe_pair() {
    close_fd(fd[0]);
    close_fd(fd[1]);
  }
  int fd[2];
};

// ---- kin ------------------------------------------------------------------------------------

int kin_receiver(int fd, int nfds, long warm, long n) {
  kin::loop loop;
  kin::stream s(loop);
  if (!s.open(kin::unique_fd(fd))) die("kin receiver: open failed");
  chunk_parser parser(receive_capacity);
  fd_check check{nfds, warm, warm + n};
  auto r = s.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd> fds) {
        if (ec == kin::errc::eof) {
          s.close();
          return;
        }
        if (ec) die("kin receiver: read failed (or MSG_CTRUNC)");
        for (kin::unique_fd& f : fds) f.reset();
        check.after_read(data.size(), fds.size());
        parser.feed(data, [&](const std::byte* p, std::uint32_t len) {
          if (const int ack = check.on_frame(p, len); ack != 0) {
            s.write(ack_frame(check.ack_value(ack)).span());
          }
        });
      });
  if (!r) die("kin receiver: read_start failed");
  loop.run();
  if (check.frames != warm + n) die("kin receiver: wrong frame count");
  return 0;
}

run_result run_kin(int nfds, long n) {
  const long warm = warmup_of(n, 1000);
  const peer p = fork_peer([&](int fd) { return kin_receiver(fd, nfds, warm, n); });
  run_result res;
  {
    pipe_pair source;
    kin::loop loop;
    kin::stream s(loop);
    if (!s.open(kin::unique_fd(p.fd))) die("kin sender: open failed");
    // write() returns false past queued_fd_limit descriptors' worth of messages; on_drain
    // resumes.
    const std::size_t high = static_cast<std::size_t>(queued_fd_limit / nfds) * frame_size;
    s.set_water_marks(high, high / 2);
    std::byte frame[frame_size];
    std::uint64_t seq = 0;
    std::uint64_t target = static_cast<std::uint64_t>(warm);
    auto pump = [&] {
      while (seq < target) {
        std::vector<kin::unique_fd> fds;
        fds.reserve(static_cast<std::size_t>(nfds));
        for (int k = 0; k < nfds; ++k) fds.emplace_back(dup_fd(source.fd[1]));
        put_frame(frame, seq_size, seq++);
        if (!s.write(std::span<const std::byte>(frame), std::move(fds))) return;
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
  res.ops = n * nfds;
  res.ops_total = (warm + n) * nfds;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

int raw_receiver(int fd, bool nonblocking, int nfds, long warm, long n) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity);
  fd_check check{nfds, warm, warm + n};
  std::vector<int> fds;
  fds.reserve(1024);
  int pending_ack = 0;
  auto on_frame = [&](const std::byte* p, std::uint32_t len) {
    if (const int ack = check.on_frame(p, len); ack != 0) pending_ack = ack;
  };
  while (!c.at_eof()) {
    fds.clear();
    const std::size_t got = c.receive(buf, on_frame, &fds);
    for (int f : fds) ::close(f);
    check.after_read(got, fds.size());
    if (pending_ack != 0) {
      const ack_frame a(check.ack_value(pending_ack));
      c.send(a.bytes, sizeof a.bytes);
      pending_ack = 0;
    }
  }
  if (check.frames != warm + n) die("raw receiver: wrong frame count");
  return 0;
}

run_result run_raw(bool nonblocking, int nfds, long n) {
  const long warm = warmup_of(n, 1000);
  const peer p = fork_peer([&](int fd) { return raw_receiver(fd, nonblocking, nfds, warm, n); });
  run_result res;
  {
    pipe_pair source;
    raw_conn c(p.fd, nonblocking);
    frame_buffer acks(4096);
    std::byte frame[frame_size];
    int fds[253];
    std::uint64_t seq = 0;
    auto send_one = [&] {
      for (int k = 0; k < nfds; ++k) fds[k] = dup_fd(source.fd[1]);
      put_frame(frame, seq_size, seq++);
      c.send(frame, frame_size, fds, nfds);
      for (int k = 0; k < nfds; ++k) ::close(fds[k]);
    };
    for (long i = 0; i < warm; ++i) send_one();
    (void)c.read_ack(acks);
    const std::uint64_t t0 = wall_ns();
    const std::uint64_t c0 = cpu_ns();
    for (long i = 0; i < n; ++i) send_one();
    res.child_cpu_ns = c.read_ack(acks);
    res.wall_ns = wall_ns() - t0;
    res.parent_cpu_ns = cpu_ns() - c0;
  }
  reap(p.pid);
  res.ops = n * nfds;
  res.ops_total = (warm + n) * nfds;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

struct uv_receiver {
  uv_loop_t loop;
  uv_pipe_t pipe;
  frame_buffer buf{receive_capacity};
  fd_check check{1, 0, 0};
};

void uv_close_and_free(uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); }

void uv_receiver_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_receiver*>(h->data)->buf.free_space());
}

void uv_receiver_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_receiver*>(s->data);
  if (nread < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    return;
  }
  // What a libuv user does with a received handle: accept it into a handle, then close it.
  std::size_t got_fds = 0;
  while (uv_pipe_pending_count(&u->pipe) > 0) {
    auto* h = new uv_pipe_t;
    check_uv(uv_pipe_init(&u->loop, h, 0), "uv_pipe_init");
    check_uv(uv_accept(as_stream(&u->pipe), as_stream(h)), "uv_accept");
    uv_close(as_handle(h), uv_close_and_free);
    ++got_fds;
  }
  u->check.after_read(static_cast<std::size_t>(nread), got_fds);
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (const int ack = u->check.on_frame(p, len); ack != 0) {
      uv_send_copy(&u->pipe, ack_frame(u->check.ack_value(ack)).span());
    }
  });
}

int uv_receiver_main(int fd, long warm, long n) {
  uv_receiver u;
  u.check = fd_check{1, warm, warm + n};
  check_uv(uv_loop_init(&u.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&u.pipe, fd), "uv_pipe_open");
  u.pipe.data = &u;
  check_uv(uv_read_start(as_stream(&u.pipe), uv_receiver_alloc, uv_receiver_read), "uv_read_start");
  uv_run(&u.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&u.loop), "uv_loop_close");
  if (u.check.frames != warm + n) die("libuv receiver: wrong frame count");
  return 0;
}

struct uv_sender;

/// One message: its request, its frame and (with a dup per message) the handle it sends.
struct uv_fd_write {
  uv_write_t req;
  uv_pipe_t handle;
  bool own_handle;
  uv_sender* sender;
  std::byte frame[frame_size];
};

struct uv_sender {
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_pipe_t source;  // the pipe's write end, for --uv-handle same
  int source_fd = -1;
  std::uint64_t seq = 0;
  std::uint64_t target = 0;
  long inflight = 0;
  bool pumping = false;
  long n = 0;
  frame_buffer acks{4096};
  int acks_seen = 0;
  std::uint64_t t0 = 0, c0 = 0;
  run_result* res = nullptr;
};

void uv_sender_pump(uv_sender* u);

void uv_free_fd_write(uv_handle_t* h) { delete static_cast<uv_fd_write*>(h->data); }

void uv_sender_written(uv_write_t* req, int status) {
  if (status != 0) die("libuv: uv_write2 failed");
  auto* w = reinterpret_cast<uv_fd_write*>(req);
  uv_sender* u = w->sender;
  if (w->own_handle) {
    w->handle.data = w;
    uv_close(as_handle(&w->handle), uv_free_fd_write);  // closes the duplicate
  } else {
    delete w;
  }
  --u->inflight;
  if (!u->pumping) uv_sender_pump(u);
}

void uv_sender_pump(uv_sender* u) {
  u->pumping = true;
  while (u->seq < u->target && u->inflight < queued_fd_limit) {
    auto* w = new uv_fd_write;
    w->sender = u;
    w->own_handle = uv_dup_per_message;
    uv_pipe_t* send = &u->source;
    if (w->own_handle) {
      check_uv(uv_pipe_init(&u->loop, &w->handle, 0), "uv_pipe_init");
      check_uv(uv_pipe_open(&w->handle, dup_fd(u->source_fd)), "uv_pipe_open");
      send = &w->handle;
    }
    put_frame(w->frame, seq_size, u->seq++);
    uv_buf_t b = buf_of(w->frame);
    check_uv(uv_write2(&w->req, as_stream(&u->pipe), &b, 1, as_stream(send), uv_sender_written),
             "uv_write2");
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
    uv_close(as_handle(&u->source), nullptr);
  });
}

run_result run_libuv(long n) {
  const long warm = warmup_of(n, 1000);
  const peer p = fork_peer([&](int fd) { return uv_receiver_main(fd, warm, n); });
  run_result res;
  {
    uv_sender u;
    u.n = n;
    u.res = &res;
    u.target = static_cast<std::uint64_t>(warm);
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) die("pipe2 failed");
    ::close(pfd[0]);
    u.source_fd = pfd[1];
    check_uv(uv_loop_init(&u.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.pipe, p.fd), "uv_pipe_open");
    check_uv(uv_pipe_init(&u.loop, &u.source, 0), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.source, u.source_fd), "uv_pipe_open");  // closed by uv_close
    u.pipe.data = &u;
    check_uv(uv_read_start(as_stream(&u.pipe), uv_sender_alloc, uv_sender_read), "uv_read_start");
    uv_sender_pump(&u);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&u.loop), "uv_loop_close");
    if (u.acks_seen != 2) die("libuv sender: the loop ended before the last ack");
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
  std::string which_fds = "all";
  std::string uv_handle = "dup";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--messages", &messages},
       {"--fds", nullptr, &which_fds},
       {"--uv-handle", nullptr, &uv_handle},
       {"--only", nullptr, &o.only},
       {"--pin", nullptr, &o.pin}},
      "[--runs N (5)] [--fds 1|16|all (all)] [--messages N (50000 with 1 fd, 20000 with 16)] "
      "[--uv-handle dup|same (dup: libuv wraps a fresh duplicate in a uv_pipe_t per message, "
      "like the others; same: one uv_pipe_t sent every time)] [--only "
      "kin|raw_block|raw_epoll|libuv (that one alone, no warm-up run, no BENCH line)] [--pin "
      "none|same|split (none)]");
  if (uv_handle != "dup" && uv_handle != "same") die("--uv-handle is dup or same");
  uv_dup_per_message = uv_handle == "dup";
  const char* suffix = apply_pin(o.pin);
  prime_libuv();
  const int fds_before = open_fd_count();
  print_header("stream_fdpass", o.runs, o.pin);
  std::printf("# libuv sends %s\n", uv_dup_per_message
                                        ? "a fresh duplicate in its own uv_pipe_t per message"
                                        : "one uv_pipe_t (no duplicate) every time");

  std::map<int, case_runs> results;
  for (const int nfds : {1, 16}) {
    if (which_fds != "all" && which_fds != std::to_string(nfds)) continue;
    bench_case c;
    c.name = "stream_fdpass_" + std::to_string(nfds) + suffix;
    c.unit = "fds/s";
    c.metric = per_second;
    c.count = messages > 0 ? messages : (nfds == 1 ? 50000 : 20000);
    c.impls = {{impl::kin, [nfds](long n) { return run_kin(nfds, n); }},
               {impl::raw_block, [nfds](long n) { return run_raw(false, nfds, n); }},
               {impl::raw_epoll, [nfds](long n) { return run_raw(true, nfds, n); }}};
    // uv_write2 sends one handle per write: libuv has no figure with 16 per message.
    if (nfds == 1) c.impls.emplace_back(impl::libuv, run_libuv);
    results[nfds] = run_case(c, o.runs, o.only);
  }
  if (results.empty()) die("--fds is 1, 16 or all");
  if (results.count(1) != 0 && results.count(16) != 0 && o.only.empty()) {
    // The 16-per-message target: kin's rate at 16 against the raw epoll loop's at 1.
    const std::string name = std::string("stream_fdpass_16_vs_raw_epoll_1") + suffix;
    kin_bench::report(name.c_str(), "fds/s", results[16].metric[impl::kin], "raw_epoll_1",
                      results[1].metric[impl::raw_epoll]);
    // The same in descriptors per CPU-second of both processes, which does not depend on how
    // busy the machine was while each of the two cases ran.
    const double k = kin_bench::median(results[16].cpu[impl::kin]);
    const double p = kin_bench::median(results[1].cpu[impl::raw_epoll]);
    std::printf("# %s cpu_us/fd kin_16=%.3f raw_epoll_1=%.3f ratio(fds per cpu-second)=%.3f\n",
                name.c_str(), k, p, p / k);
  }
  if (open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
