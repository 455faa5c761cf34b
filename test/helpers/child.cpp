// The helper child process of the tests; argv[1] chooses what it does.
#include <kin/kin.hpp>

#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include <dirent.h>
#include <unistd.h>

namespace kin_test_child {
// The handle-passing behaviours (child_handles.cpp): -1 when `behaviour` is none of them.
int handles_main(std::string_view behaviour);
// The process behaviours (child_process.cpp): -1 when `behaviour` is none of them.
int process_main(std::string_view behaviour, int argc, char** argv);
// The channel behaviours (child_channel.cpp): -1 when `behaviour` is none of them.
int channel_main(std::string_view behaviour);
int cluster_main(std::string_view behaviour, int argc, char** argv);
}  // namespace kin_test_child

namespace {

// Prints the numbers of every descriptor open in this process, one per line.
int list_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return 2;
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd != own) std::printf("%d\n", fd);
  }
  ::closedir(d);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kin-test-child BEHAVIOUR\n");
    return 2;
  }
  const std::string_view what = argv[1];
  if (what == "list-fds") return list_fds();
  if (what == "exit") return 0;
  if (const int rc = kin_test_child::handles_main(what); rc != -1) return rc;
  if (const int rc = kin_test_child::process_main(what, argc, argv); rc != -1) return rc;
  if (const int rc = kin_test_child::channel_main(what); rc != -1) return rc;
  if (const int rc = kin_test_child::cluster_main(what, argc, argv); rc != -1) return rc;
  if (what == "loop-destroyed-with-timer") {
    auto l = std::make_unique<kin::loop>();
    auto t = std::make_unique<kin::timer>(*l, [] {});
    l.reset();  // must stop the process with a message
    return 0;
  }
  if (what == "loop-destroyed-with-watcher") {
    auto l = std::make_unique<kin::loop>();
    auto w = std::make_unique<kin::io_watcher>(*l, 0, [](kin::io_events) {});
    l.reset();
    return 0;
  }
  if (what == "loop-destroyed-with-keep-alive") {
    auto l = std::make_unique<kin::loop>();
    kin::keep_alive k(*l);
    l.reset();
    return 0;
  }
  if (what == "run-inside-callback") {
    kin::loop l;
    kin::timer t(l, [&] { l.run(); });
    t.start(std::chrono::milliseconds(0)).value();
    l.run();
    return 0;
  }
  std::fprintf(stderr, "kin-test-child: unknown behaviour %s\n", argv[1]);
  return 2;
}
