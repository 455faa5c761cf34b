// The native channel codec: the frame header, and the decoder that turns the bytes and
// descriptors a stream hands up (in arrival order, cut anywhere) back into frames.
//
// A frame is an 8-byte header — the payload length (u32) and the number of descriptors (u16),
// little-endian, then two reserved zero bytes — followed by the payload. The frame's
// descriptors ride on the sendmsg that carries its first byte (several queued frames may share
// one sendmsg, and so one SCM_RIGHTS). Read boundaries carry no meaning, so descriptors are tied
// to frames by count, in order: when a frame's header is complete, every descriptor it declares
// has already arrived (with its first byte), and it takes them from the front of the queue.
#pragma once

#include <kin/fd.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kin::detail {

struct native_frame {
  static constexpr std::size_t header_size = 8;
  /// The most descriptors one frame can carry (one SCM_RIGHTS message holds at most 253).
  static constexpr std::size_t max_fds = 253;

  std::string payload;
  std::vector<unique_fd> fds;
};

/// Writes the header of a frame of `length` payload bytes carrying `fd_count` descriptors.
void encode_native_header(std::uint32_t length, std::uint16_t fd_count,
                          std::byte (&out)[native_frame::header_size]) noexcept;

class native_decoder {
 public:
  /// Frames whose payload is longer than `max_payload` are an error (kin::errc::frame_too_large).
  explicit native_decoder(std::size_t max_payload) noexcept : max_payload_(max_payload) {}

  /// Takes a chunk as the stream handed it up: bytes, and the descriptors that arrived with them
  /// (moved out of `fds`). Errors, after which the decoder is spent (every descriptor it held is
  /// closed, later calls fail the same way):
  /// - kin::errc::frame_too_large: a header declares more than max_payload bytes;
  /// - kin::errc::malformed_message: a header declares more than max_fds descriptors, or its
  ///   reserved bytes are not zero;
  /// - kin::errc::message_truncated: a header declares more descriptors than have arrived.
  result<void> feed(std::span<const std::byte> bytes, std::span<unique_fd> fds);

  /// The next complete frame, if any.
  std::optional<native_frame> next() noexcept;

  /// At the end of the stream: kin::errc::message_truncated if a frame was cut off or
  /// descriptors arrived that no frame claims (they are closed); else success.
  result<void> finish() noexcept;

  /// Bytes held of the frame not yet complete.
  /// For a decoder holding nothing (no partial frame, no descriptors, no frame not yet taken):
  /// the size of the complete, valid frame without descriptors that `bytes` starts with, its
  /// payload following the header; 0 when there is none (the bytes then go through feed(),
  /// which also reports what is wrong with them). The fast path of a receiver whose reads
  /// hold whole small frames: their payloads need not pass through the decoder's buffers.
  [[nodiscard]] std::size_t whole_plain_frame(std::span<const std::byte> bytes) const noexcept {
    if (header_have_ != 0 || payload_left_ || !fds_.empty() || !ready_.empty() || spoiled_ ||
        bytes.size() < native_frame::header_size) {
      return 0;
    }
    const auto* h = reinterpret_cast<const unsigned char*>(bytes.data());
    const std::uint32_t length = header_length(h);
    if ((h[4] | h[5] | h[6] | h[7]) != 0 || length > max_payload_ ||
        bytes.size() - native_frame::header_size < length) {
      return 0;
    }
    return native_frame::header_size + length;
  }

  [[nodiscard]] std::size_t buffered() const noexcept {
    return header_have_ + (payload_left_ ? current_.payload.size() : 0);
  }

 private:
  // The payload length a header declares.
  static std::uint32_t header_length(const unsigned char* h) noexcept {
    return static_cast<std::uint32_t>(h[0]) | (static_cast<std::uint32_t>(h[1]) << 8) |
           (static_cast<std::uint32_t>(h[2]) << 16) | (static_cast<std::uint32_t>(h[3]) << 24);
  }
  result<void> start_frame();
  void end_frame();
  result<void> spoil(std::error_code ec) noexcept;

  std::size_t max_payload_;
  unsigned char header_[native_frame::header_size] = {};
  std::size_t header_have_ = 0;
  std::deque<unique_fd> fds_;  // arrived, not yet claimed by a frame header
  std::deque<native_frame> ready_;
  // The frame whose header was read and whose payload is still arriving (payload bytes go
  // straight from the caller's chunk into it: no other copy).
  std::optional<std::size_t> payload_left_;
  native_frame current_;
  std::error_code spoiled_;
};

}  // namespace kin::detail
