// The kin::errc error category.
#include <kin/result.hpp>

#include <string>

namespace kin {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "kin"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::frame_too_large:
        return "frame larger than the configured maximum";
      case errc::message_truncated:
        return "message truncated: bytes or descriptors were lost";
      case errc::malformed_message:
        return "malformed message";
      case errc::handle_not_acknowledged:
        return "passed handle was not acknowledged by the peer";
      case errc::unknown_handle_type:
        return "unknown handle type";
      case errc::status_unknown:
        return "exit status unknown: the child was reaped by someone else";
      case errc::eof:
        return "end of stream";
      case errc::sigchld_ignored:
        return "SIGCHLD is ignored (SIG_IGN or SA_NOCLDWAIT): the kernel would reap children and "
               "their exit status would be lost";
      case errc::child_failed:
        return "child exited with a non-zero status";
      case errc::child_signalled:
        return "child was ended by a signal";
      case errc::no_channel:
        return "no channel descriptor in the environment";
      case errc::stray_descriptor:
        return "a descriptor arrived that no message claims";
      case errc::unexpected_acknowledgement:
        return "an acknowledgement arrived for no handle sent";
    }
    return "unknown kin error " + std::to_string(value);
  }
};

}  // namespace

const std::error_category& kin_category() noexcept {
  static const category instance;
  return instance;
}

}  // namespace kin
