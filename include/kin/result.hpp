// kin's error model: result<T, E> (std::expected-shaped) and the kin::errc error category.
#pragma once

#include <kin/export.hpp>

#include <new>
#include <system_error>
#include <type_traits>
#include <utility>

namespace kin {

/// Conditions that are kin's own rather than the operating system's.
enum class errc {
  frame_too_large = 1,      ///< a channel frame declares more bytes than the configured maximum
  message_truncated,        ///< descriptors or bytes of a message were cut off (MSG_CTRUNC, EOF)
  malformed_message,        ///< a frame or JSON message that does not parse
  handle_not_acknowledged,  ///< the peer refused or never acknowledged a passed handle
  unknown_handle_type,      ///< a received descriptor or handle label kin cannot rebuild
  status_unknown,           ///< a child's exit status was collected by someone else
  eof,                      ///< the peer closed its end: no more bytes will arrive
  sigchld_ignored,          ///< SIGCHLD is ignored (SIG_IGN, SA_NOCLDWAIT): statuses would be lost
  child_failed,             ///< a child exited with a non-zero status
  child_signalled,          ///< a signal ended a child
  no_channel,               ///< no channel descriptor in the environment (KIN_CHANNEL_FD)
  stray_descriptor,         ///< a descriptor arrived that no message claims
  unexpected_acknowledgement,  ///< a NODE_HANDLE_ACK or _NACK arrived for no handle sent
};

/// The category of kin::errc; its name is "kin".
KIN_API const std::error_category& kin_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), kin_category()};
}

/// An errno value as an error_code in std::system_category().
inline std::error_code errno_code(int err) noexcept { return {err, std::system_category()}; }

/// Wraps an error so it converts into any result<T, E>.
template <class E>
class unexpected {
 public:
  explicit unexpected(E e) noexcept(std::is_nothrow_move_constructible_v<E>)
      : error_(std::move(e)) {}
  [[nodiscard]] const E& error() const& noexcept { return error_; }
  [[nodiscard]] E&& error() && noexcept { return std::move(error_); }

 private:
  E error_;
};

/// Builds the failure value of a result: `return kin::fail(errno_code(EBADF));`.
template <class E>
unexpected<std::decay_t<E>> fail(E&& e) {
  return unexpected<std::decay_t<E>>(std::forward<E>(e));
}

/// Thrown by result::value() when the result holds an error that is not an error_code.
template <class E>
class bad_result_access : public std::exception {
 public:
  explicit bad_result_access(E e) : error_(std::move(e)) {}
  const char* what() const noexcept override { return "kin::result holds an error"; }
  const E& error() const noexcept { return error_; }

 private:
  E error_;
};

namespace detail {
template <class E>
[[noreturn]] void throw_result_error(const E& e) {
  if constexpr (std::is_convertible_v<E, std::error_code>) {
    throw std::system_error(std::error_code(e));
  } else {
    throw bad_result_access<E>(e);
  }
}
}  // namespace detail

/// A value of type T, or the error E that prevented it.
///
/// Test with `has_value()` or `if (r)`; read with `*r`, `r->`, or `value()`, which throws
/// std::system_error (for error_code errors) when there is no value.
template <class T, class E = std::error_code>
class [[nodiscard]] result {
 public:
  using value_type = T;
  using error_type = E;

  template <class U = T, class = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                                  !std::is_same_v<std::decay_t<U>, result>>>
  result(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>)  // NOLINT: implicit by design
      : has_value_(true) {
    ::new (static_cast<void*>(&value_)) T(std::forward<U>(v));
  }
  template <class G>
  result(unexpected<G> e) noexcept  // NOLINT: implicit by design
      : has_value_(false) {
    ::new (static_cast<void*>(&error_)) E(std::move(e).error());
  }
  result(const result& other) : has_value_(other.has_value_) {
    if (has_value_) {
      ::new (static_cast<void*>(&value_)) T(other.value_);
    } else {
      ::new (static_cast<void*>(&error_)) E(other.error_);
    }
  }
  result(result&& other) noexcept(std::is_nothrow_move_constructible_v<T>)
      : has_value_(other.has_value_) {
    if (has_value_) {
      ::new (static_cast<void*>(&value_)) T(std::move(other.value_));
    } else {
      ::new (static_cast<void*>(&error_)) E(std::move(other.error_));
    }
  }
  result& operator=(const result& other) {
    if (this != &other) {
      destroy();
      ::new (static_cast<void*>(this)) result(other);
    }
    return *this;
  }
  result& operator=(result&& other) noexcept(std::is_nothrow_move_constructible_v<T>) {
    if (this != &other) {
      destroy();
      ::new (static_cast<void*>(this)) result(std::move(other));
    }
    return *this;
  }
  ~result() { destroy(); }

  [[nodiscard]] bool has_value() const noexcept { return has_value_; }
  explicit operator bool() const noexcept { return has_value_; }

  /// The value. Precondition: has_value().
  T& operator*() & noexcept { return value_; }
  const T& operator*() const& noexcept { return value_; }
  T&& operator*() && noexcept { return std::move(value_); }
  T* operator->() noexcept { return &value_; }
  const T* operator->() const noexcept { return &value_; }

  T& value() & {
    check();
    return value_;
  }
  const T& value() const& {
    check();
    return value_;
  }
  T&& value() && {
    check();
    return std::move(value_);
  }
  template <class U>
  T value_or(U&& fallback) const& {
    return has_value_ ? value_ : static_cast<T>(std::forward<U>(fallback));
  }

  /// The error. Precondition: !has_value().
  [[nodiscard]] const E& error() const& noexcept { return error_; }
  [[nodiscard]] E&& error() && noexcept { return std::move(error_); }

 private:
  void check() const {
    if (!has_value_) detail::throw_result_error(error_);
  }
  void destroy() noexcept {
    if (has_value_) {
      value_.~T();
    } else {
      error_.~E();
    }
  }
  union {
    T value_;
    E error_;
  };
  bool has_value_;
};

/// result<void>: success, or an error.
template <class E>
class [[nodiscard]] result<void, E> {
 public:
  using value_type = void;
  using error_type = E;

  result() noexcept = default;
  template <class G>
  result(unexpected<G> e) noexcept  // NOLINT: implicit by design
      : error_(std::move(e).error()), failed_(true) {}

  [[nodiscard]] bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (failed_) detail::throw_result_error(error_);
  }
  /// The error. Precondition: !has_value().
  [[nodiscard]] const E& error() const noexcept { return error_; }

 private:
  E error_{};
  bool failed_ = false;
};

}  // namespace kin

template <>
struct std::is_error_code_enum<kin::errc> : std::true_type {};
