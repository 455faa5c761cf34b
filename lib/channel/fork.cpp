// kin::fork (a child with a channel) and channel::from_environment (the child's end).
#include <kin/channel.hpp>

#include "channel/channel_state.hpp"

#include <kin/fd_kind.hpp>
#include <kin/this_process.hpp>

#include <cerrno>
#include <charconv>
#include <optional>
#include <string>

#include <fcntl.h>
#include <sys/resource.h>

namespace kin {

namespace {

constexpr const char* kin_variable = "KIN_CHANNEL_FD";
constexpr const char* node_variable = "NODE_CHANNEL_FD";
constexpr const char* node_mode_variable = "NODE_CHANNEL_SERIALIZATION_MODE";

// Removes `name` from the environment and returns what it held.
std::optional<std::string> take_env(const char* name) {
  std::optional<std::string> value = this_process::get_env(name);
  if (value) (void)this_process::unset_env(name);
  return value;
}

}  // namespace

result<std::unique_ptr<channel>> channel::from_environment(loop& l, channel_options options) {
  // All are removed whatever happens next, as Node removes its own.
  const std::optional<std::string> kin_value = take_env(kin_variable);
  const std::optional<std::string> node_value = take_env(node_variable);
  const std::optional<std::string> mode = take_env(node_mode_variable);
  const std::optional<std::string>& value = kin_value ? kin_value : node_value;
  if (!value) return fail(make_error_code(errc::no_channel));
  options.codec = kin_value ? channel_codec::native : channel_codec::node;
  int fd = -1;
  const char* first = value->data();
  const char* last = first + value->size();
  auto [end, ec] = std::from_chars(first, last, fd);
  if (ec != std::errc() || end != last || value->empty() || fd < 0) {
    return fail(errno_code(EINVAL));
  }
  // Node's other serialization is V8's own format. An empty mode is json, as for Node.
  if (!kin_value && mode && !mode->empty() && *mode != "json") {
    return fail(errno_code(EPROTONOSUPPORT));
  }
  // Looked at before it is taken: a descriptor that is not a channel is not ours to close.
  auto kind = detect_fd_kind(fd);
  if (!kind) return fail(kind.error());
  if (*kind != fd_kind::unix_stream_socket) {
    return fail(errno_code(detail::not_a_channel(*kind)));
  }
  // Inherited without close-on-exec: this process's own children must not get it.
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return fail(errno_code(errno));
  auto ch = std::make_unique<channel>(l, options);
  if (auto r = ch->open(unique_fd(fd)); !r) return fail(r.error());
  ch->stream_->unref();
  ch->ref_on_message_ = true;
  return ch;
}

result<forked, spawn_error> fork(loop& l, const std::string& program,
                                 const std::vector<std::string>& args, const fork_options& o) {
  rlimit lim{};
  const bool in_limit = ::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY ||
                        static_cast<rlim_t>(o.channel_fd) < lim.rlim_cur;
  if (o.channel_fd < 0 || !in_limit) {
    return fail(spawn_error{spawn_step::prepare, errno_code(EINVAL), program});
  }
  auto pair = make_socketpair();
  if (!pair) return fail(spawn_error{spawn_step::prepare, pair.error(), program});
  spawn_options so = o.spawn;
  so.file = program;
  so.args.clear();
  so.args.reserve(args.size() + 1);
  so.args.push_back(program);
  so.args.insert(so.args.end(), args.begin(), args.end());
  const auto at = static_cast<std::size_t>(o.channel_fd);
  if (so.stdio.size() <= at) so.stdio.resize(at + 1, stdio::closed());
  so.stdio[at] = stdio::fd(pair->second.get());
  // The child's from_environment() takes KIN_CHANNEL_FD before NODE_CHANNEL_FD: only the
  // variables of this channel's codec reach it.
  const std::string number = std::to_string(o.channel_fd);
  if (o.channel.codec == channel_codec::node) {
    so.env_unset.emplace_back(kin_variable);
    so.env.emplace_back(node_variable, number);
    so.env.emplace_back(node_mode_variable, "json");
  } else {
    so.env_unset.emplace_back(node_variable);
    so.env_unset.emplace_back(node_mode_variable);
    so.env.emplace_back(kin_variable, number);
  }
  auto child = spawn(l, so);
  if (!child) return fail(child.error());
  pair->second.reset();  // the child has its copy
  // A child without its channel is of no use: if the parent's end cannot be opened (or an
  // allocation fails), it is killed (and reaped by the loop) and the error returned.
  try {
    auto ch = std::make_unique<channel>(l, o.channel);
    if (auto r = ch->open(std::move(pair->first)); !r) {
      (void)child->kill(SIGKILL);
      return fail(spawn_error{spawn_step::prepare, r.error(), program});
    }
    return forked{std::move(*child), std::move(ch)};
  } catch (...) {
    (void)child->kill(SIGKILL);
    throw;
  }
}

}  // namespace kin
