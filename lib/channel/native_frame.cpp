// The native channel codec's header and decoder (see native_frame.hpp).
#include "channel/native_frame.hpp"

#include <algorithm>
#include <cstring>

namespace kin::detail {

void encode_native_header(std::uint32_t length, std::uint16_t fd_count,
                          std::byte (&out)[native_frame::header_size]) noexcept {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<std::byte>((length >> (8 * i)) & 0xFF);
  out[4] = static_cast<std::byte>(fd_count & 0xFF);
  out[5] = static_cast<std::byte>(fd_count >> 8);
  out[6] = std::byte{0};
  out[7] = std::byte{0};
}

result<void> native_decoder::feed(std::span<const std::byte> bytes, std::span<unique_fd> fds) {
  // Descriptors are owned from the moment they arrive, so that every path closes them.
  for (unique_fd& fd : fds) fds_.push_back(std::move(fd));
  if (spoiled_) return spoil(spoiled_);
  const char* data = reinterpret_cast<const char*>(bytes.data());
  std::size_t i = 0;
  while (i < bytes.size()) {
    if (payload_left_) {
      const std::size_t take = std::min(*payload_left_, bytes.size() - i);
      current_.payload.append(data + i, take);
      i += take;
      *payload_left_ -= take;
      if (*payload_left_ == 0) end_frame();
      continue;
    }
    const std::size_t take = std::min(native_frame::header_size - header_have_, bytes.size() - i);
    std::memcpy(header_ + header_have_, data + i, take);
    header_have_ += take;
    i += take;
    if (header_have_ < native_frame::header_size) break;
    if (auto r = start_frame(); !r) return r;
  }
  return {};
}

// The header is complete: check it, claim the frame's descriptors, expect its payload.
result<void> native_decoder::start_frame() {
  const unsigned char* h = header_;
  const std::uint32_t length = header_length(h);
  const std::size_t fd_count =
      static_cast<std::size_t>(h[4]) | (static_cast<std::size_t>(h[5]) << 8);
  header_have_ = 0;
  if (length > max_payload_) return spoil(make_error_code(errc::frame_too_large));
  if (fd_count > native_frame::max_fds || h[6] != 0 || h[7] != 0) {
    return spoil(make_error_code(errc::malformed_message));
  }
  // The frame's descriptors came with its first byte, which has arrived.
  if (fd_count > fds_.size()) return spoil(make_error_code(errc::message_truncated));
  current_.fds.reserve(fd_count);
  for (std::size_t k = 0; k < fd_count; ++k) {
    current_.fds.push_back(std::move(fds_.front()));
    fds_.pop_front();
  }
  // Grown as the bytes arrive: 8 bytes from a peer must not reserve max_frame bytes.
  current_.payload.reserve(std::min<std::size_t>(length, 64 * 1024));
  payload_left_ = length;
  if (length == 0) end_frame();
  return {};
}

void native_decoder::end_frame() {
  payload_left_.reset();
  ready_.push_back(std::move(current_));
  current_ = native_frame{};
}

std::optional<native_frame> native_decoder::next() noexcept {
  if (ready_.empty()) return std::nullopt;
  native_frame f = std::move(ready_.front());
  ready_.pop_front();
  return f;
}

result<void> native_decoder::finish() noexcept {
  if (spoiled_) return spoil(spoiled_);
  if (payload_left_ || header_have_ > 0 || !fds_.empty()) {
    return spoil(make_error_code(errc::message_truncated));
  }
  return {};
}

result<void> native_decoder::spoil(std::error_code ec) noexcept {
  spoiled_ = ec;
  fds_.clear();
  current_ = native_frame{};
  payload_left_.reset();
  header_have_ = 0;
  return fail(ec);
}

}  // namespace kin::detail
