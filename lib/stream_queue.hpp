// kin::stream's write queue: requests (bytes, the descriptors that ride on them, the callbacks
// of the writes coalesced into them) in a ring whose slots are reused, so that a write costs no
// allocation once the stream has warmed up.
#pragma once

#include <kin/fd.hpp>
#include <kin/stream.hpp>

#include <cstddef>
#include <system_error>
#include <utility>
#include <vector>

namespace kin::detail {

// The descriptors of one write, and where in its request that write's first byte is.
struct fd_group {
  std::size_t at;
  std::vector<unique_fd> fds;  // closed once the byte at `at` is sent
};

struct write_req {
  std::vector<std::byte> data;
  std::size_t sent = 0;
  // Descriptors of the writes coalesced into this request, in byte order. Every sendmsg stops
  // short of the next group's byte, so each group rides on the first byte of its own write.
  std::vector<fd_group> groups;
  std::size_t next_group = 0;  // the groups before it are sent
  // Callbacks of the writes coalesced into this request, with the end of each write's bytes.
  // A write refused at once (see stream::refuse) has an entry with its error, so that its
  // callback still comes in order.
  struct entry {
    std::size_t end;
    stream::write_callback cb;
    std::error_code refused;
  };
  std::vector<entry> callbacks;

  // The group whose byte is the next to send, if any.
  [[nodiscard]] fd_group* carried() noexcept {
    return next_group < groups.size() && groups[next_group].at == sent ? &groups[next_group]
                                                                       : nullptr;
  }
};

class write_queue {
 public:
  // Requests with more bookkeeping than this give it back when they end.
  static constexpr std::size_t kept_entries = 4;
  // The largest buffer kept for the next tail (the coalescing limit).
  static constexpr std::size_t kept_buffer = 64 * 1024;
  // The most slots kept by an empty ring.
  static constexpr std::size_t kept_slots = 16;

  write_queue() = default;
  write_queue(const write_queue&) = delete;
  write_queue& operator=(const write_queue&) = delete;
  void swap(write_queue& other) noexcept {
    slots_.swap(other.slots_);
    std::swap(mask_, other.mask_);
    std::swap(head_, other.head_);
    std::swap(count_, other.count_);
    spare_.swap(other.spare_);
  }

  [[nodiscard]] bool empty() const noexcept { return count_ == 0; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }
  write_req& operator[](std::size_t i) noexcept { return slots_[(head_ + i) & mask_]; }
  write_req& front() noexcept { return slots_[head_]; }
  write_req& back() noexcept { return (*this)[count_ - 1]; }

  // A new request at the end, with no bytes. The ring may grow, which moves the requests:
  // references to them do not survive this call.
  write_req& push_back() {
    if (count_ == mask_ + 1 || slots_.empty()) grow();
    ++count_;
    return back();
  }

  // Ends the front request. Its slot keeps its small vectors for the next request. When it
  // was the last one, it stays at the head with its byte buffer (if small enough to keep), to
  // be the next tail: a stream that writes one batch per iteration reuses one buffer. Otherwise
  // the buffer becomes the spare for the next tail if it is the largest one seen that is still
  // small enough to keep. A ring that a deep queue made large is given back once empty.
  void pop_front() noexcept {
    write_req& r = front();
    recycle(r, count_ == 1);
    if (--count_ != 0) {
      head_ = (head_ + 1) & mask_;
    } else if (mask_ >= kept_slots) {
      shrink();
    }
  }

  // Ends every request (closing their descriptors) and drops their callbacks.
  void clear() noexcept {
    while (count_ != 0) pop_front();
  }

  // Gives an empty request of push_back() a buffer for small writes: the spare one if there
  // is one, else one with room for `room` bytes.
  void give_buffer(write_req& r, std::size_t room) {
    if (r.data.capacity() != 0) return;  // the buffer of the request this slot held last
    if (spare_.capacity() != 0) {
      r.data.swap(spare_);
    } else {
      r.data.reserve(room);
    }
  }

 private:
  void recycle(write_req& r, bool keep_buffer) noexcept {
    const std::size_t room = r.data.capacity();
    if (room > kept_buffer) {
      std::vector<std::byte>().swap(r.data);
    } else if (keep_buffer) {
      // One buffer kept per stream: the larger of this one and the spare.
      if (spare_.capacity() > room) r.data.swap(spare_);
      r.data.clear();
      if (spare_.capacity() != 0) std::vector<std::byte>().swap(spare_);
    } else if (room > spare_.capacity()) {
      r.data.clear();
      spare_.swap(r.data);
      std::vector<std::byte>().swap(r.data);
    } else if (room != 0) {
      std::vector<std::byte>().swap(r.data);
    }
    r.sent = 0;
    if (!r.groups.empty() || r.groups.capacity() > kept_entries) {
      r.next_group = 0;
      if (r.groups.capacity() > kept_entries) {
        std::vector<fd_group>().swap(r.groups);
      } else {
        r.groups.clear();
      }
    }
    if (r.callbacks.capacity() > kept_entries) {
      std::vector<write_req::entry>().swap(r.callbacks);
    } else if (!r.callbacks.empty()) {
      r.callbacks.clear();
    }
  }

  [[gnu::noinline]] void shrink() noexcept {
    std::vector<write_req>().swap(slots_);
    head_ = 0;
    mask_ = 0;
  }

  [[gnu::noinline]] void grow() {
    std::vector<write_req> bigger(slots_.empty() ? 4 : slots_.size() * 2);
    for (std::size_t i = 0; i < count_; ++i) bigger[i] = std::move((*this)[i]);
    slots_.swap(bigger);
    head_ = 0;
    mask_ = slots_.size() - 1;
  }

  std::vector<write_req> slots_;  // a power of two of them, or none
  std::size_t mask_ = 0;          // slots_.size() - 1
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  std::vector<std::byte> spare_;  // a sent request's buffer, for the next tail
};

}  // namespace kin::detail
