// The helper child's channel behaviours: "channel-echo" opens the channel from the environment,
// sends every message back with the descriptors that came with it, and exits 0 when the parent
// disconnects; "channel-env" prints what channel::from_environment() said and whether
// KIN_CHANNEL_FD is still set.
#include <kin/channel.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/this_process.hpp>

#include <cstdio>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace kin_test_child {

namespace {

// The descriptor a received handle holds, taken back from it.
kin::unique_fd take_fd(kin::any_handle& h) {
  return std::visit(
      [](auto& held) -> kin::unique_fd {
        if constexpr (std::is_same_v<std::decay_t<decltype(held)>, kin::raw_descriptor>) {
          return std::move(held.fd);
        } else {
          auto fd = held->release();
          return fd ? std::move(*fd) : kin::unique_fd();
        }
      },
      h);
}

int echo() {
  kin::loop l;
  auto ch = kin::channel::from_environment(l);
  if (!ch) {
    std::fprintf(stderr, "kin-test-child: no channel: %s\n", ch.error().message().c_str());
    return 1;
  }
  kin::channel& c = **ch;
  int failures = 0;
  c.on_message([&](std::string message, std::vector<kin::any_handle> handles) {
    std::vector<kin::unique_fd> fds;
    for (auto& h : handles) fds.push_back(take_fd(h));
    c.send(message, std::move(fds), [&](std::error_code ec) { failures += ec ? 1 : 0; });
  });
  c.on_error([&](std::error_code ec) {
    std::fprintf(stderr, "kin-test-child: channel error: %s\n", ec.message().c_str());
    ++failures;
  });
  l.run();  // until the parent disconnects
  return failures == 0 ? 0 : 1;
}

int report_env() {
  kin::loop l;
  auto ch = kin::channel::from_environment(l);
  std::printf("%s %s\n", ch ? "ok" : ch.error().message().c_str(),
              kin::this_process::get_env("KIN_CHANNEL_FD") ? "still-set" : "removed");
  return 0;
}

}  // namespace

int channel_main(std::string_view behaviour) {
  if (behaviour == "channel-echo") return echo();
  if (behaviour == "channel-env") return report_env();
  return -1;
}

}  // namespace kin_test_child
