// A program that uses kin from outside: it runs a loop until a 20 ms timer fires, runs a child
// to its end, and exits 0 only if both worked. It includes every public header (kin.hpp), so
// a header missing from the installation fails here.
#include <kin/kin.hpp>

#include <chrono>
#include <cstdio>
#include <exception>

int main() {
  try {
    bool fired = false;
    kin::loop l;
    kin::timer t(l, [&] { fired = true; });
    t.start(std::chrono::milliseconds(20)).value();
    l.run();
    std::printf("kin %s: the timer %s\n", KIN_VERSION_STRING, fired ? "fired" : "did not fire");
    kin::spawn_sync_options o;
    o.file = "/bin/sh";
    o.args = {"sh", "-c", "printf child"};
    const kin::spawn_sync_result r = kin::spawn_sync(o);
    std::printf("pid %d: the child wrote \"%s\"\n", static_cast<int>(kin::this_process::pid()),
                r.out().c_str());
    return fired && !r.error && r.out() == "child" ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kin-consumer: %s\n", e.what());
    return 1;
  }
}
