// kin::spawn_sync: a child run to its end on a private loop.
#include <kin/process.hpp>

#include "child_runner.hpp"

namespace kin {

spawn_sync_options::spawn_sync_options() {
  stdio = {kin::stdio::pipe(), kin::stdio::pipe(), kin::stdio::pipe()};
}

namespace {
const std::string& captured(const spawn_sync_result& r, std::size_t fd) noexcept {
  static const std::string none;
  return fd < r.output.size() && r.output[fd] ? *r.output[fd] : none;
}
}  // namespace

const std::string& spawn_sync_result::out() const noexcept { return captured(*this, 1); }
const std::string& spawn_sync_result::err() const noexcept { return captured(*this, 2); }

spawn_sync_result spawn_sync(const spawn_sync_options& options) {
  // A loop of its own per call: nothing of the caller's runs while it waits, and nothing of
  // it (descriptors, children) is left behind when it returns.
  auto l = loop::create();
  if (!l) {
    spawn_sync_result r;
    r.output.resize(options.stdio.size());  // a fresh result: every entry empty
    r.error = l.error();
    r.failure = spawn_error{spawn_step::prepare, l.error(), options.file};
    return r;
  }
  detail::run_limits limits;
  limits.timeout = options.timeout;
  limits.kill_signal = options.kill_signal;
  limits.kill_grace = options.kill_grace;
  limits.max_buffer = options.max_buffer;
  limits.limit = options.limit;
  detail::child_runner runner(*l, limits, options.input, {});
  try {
    auto p = runner.start(*l, options);
    if (!p) return std::move(runner.outcome());
    l->run();
  } catch (...) {
    // Out of memory with the child started: it was sent SIGKILL; collect it before the loop
    // goes (with the loop, nothing could).
    l->run();
    throw;
  }
  return std::move(runner.outcome());
}

}  // namespace kin
