// Probe: how long glibc's memcpy takes to copy one 64 KiB frame (65540 bytes, as kin::stream
// copies a large write into its queue when it cannot send it at once) depending on where the
// destination lies relative to the source within a 4 KiB page. On some CPUs (AMD Zen among them)
// the `rep movsb` that glibc uses for copies of this size slows down many times when the
// destination is a few bytes past the source modulo 4096 (4K aliasing). The stream benchmarks'
// 64 KiB figure for kin depended on it until kin's copy started at the source's offset modulo 64
// (8797e13; see BENCHMARKS.md). Prints the best time over 200 copies per distance.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench.hpp"

int main(int argc, char** argv) {
  long bytes = 65540;
  kin_bench::parse_options(argc, argv, {{"--bytes", &bytes}}, "[--bytes N (65540)]");
  const std::size_t n = static_cast<std::size_t>(bytes);
  constexpr std::size_t page = 4096;
  // Both buffers page-aligned, with room for every offset; touched before timing.
  const std::size_t size = n + 4 * page;
  auto* src = static_cast<std::byte*>(std::aligned_alloc(page, size));
  auto* dst = static_cast<std::byte*>(std::aligned_alloc(page, size));
  if (src == nullptr || dst == nullptr) kin_bench::die("aligned_alloc failed");
  std::memset(src, 0x5a, size);
  std::memset(dst, 1, size);
  std::printf("# memcpy of %zu bytes; source 16 bytes into a page (as malloc's chunks are)\n", n);
  std::printf("# (dst - src) mod 4096 : best of 200 copies\n");
  const std::size_t distances[] = {0, 8, 16, 32, 48, 64, 128, 1024, 2048, 4032, 4080};
  for (const std::size_t d : distances) {
    std::byte* s = src + page + 16;
    std::byte* t = dst + page + 16 + d;
    std::uint64_t best = UINT64_MAX;
    for (int r = 0; r < 200; ++r) {
      const std::uint64_t t0 = kin_bench::wall_ns();
      std::memcpy(t, s, n);
      const std::uint64_t e = kin_bench::wall_ns() - t0;
      // Keep the copy: the compiler may not drop or merge it.
      __asm__ volatile("" : : "r"(t) : "memory");
      best = std::min(best, e);
    }
    std::printf("distance %4zu: %7.2f us (%.1f GB/s)\n", d, static_cast<double>(best) / 1e3,
                static_cast<double>(n) / static_cast<double>(best));
  }
  std::free(src);
  std::free(dst);
  return 0;
}
