// A program that uses kin from outside: it runs a loop until a 20 ms timer fires, and exits 0
// only if it did.
#include <kin/loop.hpp>
#include <kin/version.hpp>

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
    return fired ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kin-consumer: %s\n", e.what());
    return 1;
  }
}
