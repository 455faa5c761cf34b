// kin::exec and kin::exec_file: a child with captured output reported to a callback (or
// returned, for the _sync forms), as Node's exec and execFile.
#include <kin/process.hpp>

#include "child_runner.hpp"
#include "loop_impl.hpp"

#include <memory>

namespace kin {

namespace {

spawn_options options_for(const std::string& file, std::vector<std::string> args,
                          const exec_options& o) {
  spawn_options so;
  so.file = file;
  so.args = std::move(args);
  so.clear_env = o.clear_env;
  so.env = o.env;
  so.env_unset = o.env_unset;
  so.cwd = o.cwd;
  so.stdio = {stdio::pipe(), stdio::pipe(), stdio::pipe()};
  so.kill_signal = o.kill_signal;
  return so;
}

detail::run_limits limits_for(const exec_options& o) {
  detail::run_limits limits;
  limits.timeout = o.timeout;
  limits.kill_signal = o.kill_signal;
  limits.kill_grace = o.kill_grace;
  limits.max_buffer = o.max_buffer;
  limits.limit = buffer_limit::per_stream;
  return limits;
}

std::vector<std::string> shell_args(const std::string& shell, const std::string& command) {
  return {shell, "-c", command};
}

exec_result result_of(detail::child_runner& r) {
  spawn_sync_result& s = r.outcome();
  exec_result e;
  e.error = s.error;
  e.failure = std::move(s.failure);
  e.pid = s.pid;
  e.exit_status = s.exit_status;
  e.term_signal = s.term_signal;
  e.killed = r.killed();
  e.timed_out = r.timed_out();
  e.overflow_fd = s.overflow_fd;
  if (s.output.size() > 1 && s.output[1]) e.out = std::move(*s.output[1]);
  if (s.output.size() > 2 && s.output[2]) e.err = std::move(*s.output[2]);
  // As Node's exec: a timeout is not an error by itself (the signal it sends usually is, and a
  // child that survives it and exits 0 succeeded); timed_out tells.
  if (e.error == std::errc::timed_out) e.error.clear();
  if (!e.error && !e.failure) {
    if (e.term_signal != 0) {
      e.error = make_error_code(errc::child_signalled);
    } else if (e.exit_status.value_or(0) != 0) {
      e.error = make_error_code(errc::child_failed);
    }
  }
  return e;
}

result<process, spawn_error> run_async(loop& l, const spawn_options& so, const exec_options& o,
                                       exec_callback cb) {
  // The runner lives until the child is reaped and its pipes are done, whatever becomes of the
  // process object; it is freed, and the callback called, from a posted function, not from
  // inside one of its own handles' callbacks.
  auto runner = std::make_unique<detail::child_runner>(
      l, limits_for(o), o.input, [cb = std::move(cb)](detail::child_runner& r) mutable {
        // Through the loop's implementation: the kin::loop may have been moved meanwhile.
        r.owner_loop().post([runner = &r, cb = std::move(cb)] {
          exec_result e = result_of(*runner);
          delete runner;
          if (cb) cb(std::move(e));
        });
      });
  auto p = runner->start(l, so);
  if (p) runner.release();  // it frees itself once done
  return p;
}

exec_result run_sync(const spawn_options& so, const exec_options& o) {
  auto l = loop::create();
  if (!l) {
    exec_result e;
    e.error = l.error();
    e.failure = spawn_error{spawn_step::prepare, l.error(), so.file};
    return e;
  }
  detail::child_runner runner(*l, limits_for(o), o.input, {});
  try {
    auto p = runner.start(*l, so);
    if (p) l->run();
  } catch (...) {
    l->run();  // collect the child that start() killed
    throw;
  }
  return result_of(runner);
}

}  // namespace

result<process, spawn_error> exec(loop& l, const std::string& command, const exec_options& o,
                                  exec_callback cb) {
  return run_async(l, options_for(o.shell, shell_args(o.shell, command), o), o, std::move(cb));
}

result<process, spawn_error> exec_file(loop& l, const std::string& file,
                                       const std::vector<std::string>& args, const exec_options& o,
                                       exec_callback cb) {
  return run_async(l, options_for(file, args, o), o, std::move(cb));
}

exec_result exec_sync(const std::string& command, const exec_options& o) {
  return run_sync(options_for(o.shell, shell_args(o.shell, command), o), o);
}

exec_result exec_file_sync(const std::string& file, const std::vector<std::string>& args,
                           const exec_options& o) {
  return run_sync(options_for(file, args, o), o);
}

}  // namespace kin
