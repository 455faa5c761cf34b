// libFuzzer target for the native frame decoder (lib/channel/native_frame.cpp). An input is a
// script (fuzz_script.hpp): a byte stream cut anywhere, with descriptors arriving with any chunk.
// Each run is compared with a reading of the whole stream frame by frame (what native_frame.hpp
// promises), and every descriptor handed in must come out in a frame or be closed by the
// decoder, the moment the decoder is spent.
#include "channel/native_frame.hpp"
#include "fuzz_script.hpp"

#include <kin/result.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace {

using kin::detail::native_decoder;
using kin::detail::native_frame;

struct expected_frame {
  std::string_view payload;
  std::size_t first_fd = 0;  // index of its first descriptor in arrival order
  std::size_t fd_count = 0;
};

struct expectation {
  std::vector<expected_frame> frames;  // delivered, even when an error follows
  std::error_code error;
  std::size_t error_at = 0;  // the chunk whose feed() reports it; chunks.size() means finish()
};

std::uint32_t byte_at(const char* p, int k) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(p[k]));
}

// What the decoder must make of a script, read off the whole stream: frames one after another.
// A header is judged in the chunk that holds its last byte, and its frame can claim only
// descriptors that arrived up to that chunk.
expectation expect(const kin_fuzz::script& s) {
  expectation e;
  e.error_at = s.chunks.size();
  std::vector<std::size_t> arrived;  // descriptors arrived up to and including chunk c
  std::size_t sum = 0;
  for (const kin_fuzz::chunk& c : s.chunks) arrived.push_back(sum += c.fds);
  const std::string_view stream = s.stream;
  std::size_t at = 0;
  std::size_t claimed = 0;
  while (stream.size() - at >= native_frame::header_size) {
    const char* h = stream.data() + at;
    const std::size_t header_end = at + native_frame::header_size;
    const std::size_t chunk = static_cast<std::size_t>(
        std::upper_bound(s.ends.begin(), s.ends.end(), header_end - 1) - s.ends.begin());
    const std::uint32_t length =
        byte_at(h, 0) | (byte_at(h, 1) << 8) | (byte_at(h, 2) << 16) | (byte_at(h, 3) << 24);
    const std::size_t fd_count = byte_at(h, 4) | (byte_at(h, 5) << 8);
    std::optional<kin::errc> bad;
    if (length > s.limit) {
      bad = kin::errc::frame_too_large;
    } else if (fd_count > native_frame::max_fds || h[6] != 0 || h[7] != 0) {
      bad = kin::errc::malformed_message;
    } else if (fd_count > arrived[chunk] - claimed) {
      bad = kin::errc::message_truncated;
    }
    if (bad) {
      e.error = make_error_code(*bad);
      e.error_at = chunk;
      return e;
    }
    if (stream.size() - header_end < length) break;  // cut off: finish() reports it
    e.frames.push_back({stream.substr(header_end, length), claimed, fd_count});
    claimed += fd_count;
    at = header_end + length;
  }
  if (at < stream.size() || claimed < s.fds) {
    e.error = make_error_code(kin::errc::message_truncated);  // cut off, or unclaimed descriptors
  }
  return e;
}

struct outcome {
  std::vector<std::string> payloads;
  std::vector<std::size_t> fd_counts;
  std::error_code error;
  std::size_t error_at = 0;
};

// Feeds the script to a decoder, checking after every call what holds at that point. `fast`:
// as kin::channel reads, whole frames without descriptors at the front of a chunk that comes
// without descriptors are taken with whole_plain_frame() before the rest is fed.
outcome decode(const kin_fuzz::script& s, bool split, const expectation* want, bool fast) {
  kin_fuzz::fd_pool pool(s.fds);
  const std::vector<int>& numbers = pool.numbers();
  // Which descriptors end up in a delivered frame (known only when there is an expectation).
  std::vector<bool> in_frame(s.fds, false);
  if (want) {
    for (const expected_frame& f : want->frames) {
      for (std::size_t k = 0; k < f.fd_count; ++k) in_frame[f.first_fd + k] = true;
    }
  }
  native_decoder d(s.limit);
  outcome out;
  out.error_at = s.chunks.size();
  std::vector<native_frame> frames;  // out of the decoder, their descriptors still open
  auto drain = [&] {
    while (std::optional<native_frame> f = d.next()) frames.push_back(std::move(*f));
  };
  auto step = [&](std::span<const std::byte> bytes, std::size_t fd_count, bool hold,
                  std::size_t index) {
    const std::size_t before = pool.given();
    std::vector<kin::unique_fd> fds = pool.take(fd_count);
    if (fast && fds.empty()) {
      while (const std::size_t size = d.whole_plain_frame(bytes)) {
        KIN_FUZZ_CHECK(!out.error && size >= native_frame::header_size && size <= bytes.size());
        native_frame f;
        f.payload.assign(reinterpret_cast<const char*>(bytes.data()) + native_frame::header_size,
                         size - native_frame::header_size);
        frames.push_back(std::move(f));
        bytes = bytes.subspan(size);
      }
    }
    const kin::result<void> r = d.feed(bytes, fds);
    for (const kin::unique_fd& fd : fds) KIN_FUZZ_CHECK(!fd.is_open());  // all taken over
    if (out.error) {
      // Spent: every later call fails the same way, nothing more comes out, and descriptors
      // handed in now are closed at once.
      KIN_FUZZ_CHECK(!r && r.error() == out.error);
      KIN_FUZZ_CHECK(!d.next());
      for (bool o : pool.open(before, pool.given())) KIN_FUZZ_CHECK(!o);
    } else if (!r) {
      out.error = r.error();
      out.error_at = index;
      if (want) KIN_FUZZ_CHECK(out.error == want->error && index == want->error_at);
      drain();  // the frames before the bad one stay available
      // Every descriptor that is not in one of them is closed already, and none that is.
      if (want) {
        const std::vector<bool>& open = pool.open(0, pool.given());
        for (std::size_t k = 0; k < open.size(); ++k) KIN_FUZZ_CHECK(open[k] == in_frame[k]);
      }
    } else if (!hold) {
      drain();
    }
  };
  if (split) {
    for (std::size_t c = 0; c < s.chunks.size(); ++c) {
      step(s.chunks[c].bytes, s.chunks[c].fds, s.chunks[c].hold, c);
    }
  } else {
    const auto* bytes = reinterpret_cast<const std::byte*>(s.stream.data());
    step(std::span(bytes, s.stream.size()), s.fds, false, 0);
  }
  const kin::result<void> f = d.finish();
  if (out.error) {
    KIN_FUZZ_CHECK(!f && f.error() == out.error);
  } else if (!f) {
    out.error = f.error();
    out.error_at = s.chunks.size();
  }
  drain();
  KIN_FUZZ_CHECK(!d.next());
  // Whatever happened, a finished decoder holds no descriptor: those in frames are open, every
  // other one is closed.
  std::size_t in_frames = 0;
  for (const native_frame& frame : frames) {
    KIN_FUZZ_CHECK(frame.fds.size() <= native_frame::max_fds);
    KIN_FUZZ_CHECK(frame.payload.size() <= s.limit);
    for (const kin::unique_fd& fd : frame.fds) {
      // Claimed in arrival order, each once.
      KIN_FUZZ_CHECK(in_frames < numbers.size() && fd.get() == numbers[in_frames]);
      ++in_frames;
    }
    out.payloads.push_back(frame.payload);
    out.fd_counts.push_back(frame.fds.size());
  }
  const std::vector<bool>& open = pool.open();
  for (std::size_t k = 0; k < open.size(); ++k) KIN_FUZZ_CHECK(open[k] == (k < in_frames));
  // The owner of a frame closes its descriptors.
  frames.clear();
  for (bool o : pool.open()) KIN_FUZZ_CHECK(!o);
  return out;
}

void check_against(const outcome& got, const expectation& want, bool same_chunks) {
  KIN_FUZZ_CHECK(got.error == want.error);
  if (same_chunks) KIN_FUZZ_CHECK(got.error_at == want.error_at);
  KIN_FUZZ_CHECK(got.payloads.size() == want.frames.size());
  for (std::size_t i = 0; i < want.frames.size(); ++i) {
    KIN_FUZZ_CHECK(got.payloads[i] == want.frames[i].payload);
    KIN_FUZZ_CHECK(got.fd_counts[i] == want.frames[i].fd_count);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const kin_fuzz::script s = kin_fuzz::read_script(data, size);
  const expectation want = expect(s);
  check_against(decode(s, true, &want, false), want, true);
  // The channel's way of reading gives the same frames, errors and descriptors.
  check_against(decode(s, true, &want, true), want, true);
  // Without descriptors, where the stream is cut cannot matter: the whole stream in one chunk
  // decodes to the same frames and the same error.
  if (s.fds == 0) check_against(decode(s, false, nullptr, false), want, false);
  return 0;
}
