// Runs a fuzz target without libFuzzer: LLVMFuzzerTestOneInput once over each file named on
// the command line and each file in a directory named there, so that the corpora (and every
// crash added to them) are regression tests under any compiler and any sanitizer.
#include <kin/fd.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

bool replay(const fs::path& file) {
  const kin::unique_fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    std::fprintf(stderr, "cannot open %s: %s\n", file.c_str(), std::strerror(errno));
    return false;
  }
  std::vector<std::uint8_t> bytes;
  std::uint8_t buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "cannot read %s: %s\n", file.c_str(), std::strerror(errno));
      return false;
    }
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
  // A buffer of exactly the input's size, as libFuzzer passes it, so that AddressSanitizer sees
  // a read past its end.
  const auto copy = std::make_unique<std::uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), copy.get());
  LLVMFuzzerTestOneInput(copy.get(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIRECTORY...\n", argv[0]);
    return 2;
  }
  std::size_t replayed = 0;
  for (int a = 1; a < argc; ++a) {
    const fs::path arg = argv[a];
    std::vector<fs::path> files;
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (const fs::directory_entry& e : fs::directory_iterator(arg, ec)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
      if (ec) {
        std::fprintf(stderr, "cannot list %s: %s\n", arg.c_str(), ec.message().c_str());
        return 1;
      }
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(arg);
    }
    for (const fs::path& file : files) {
      if (!replay(file)) return 1;
      ++replayed;
    }
  }
  // An empty or missing corpus must not pass for a replayed one.
  if (replayed == 0) {
    std::fprintf(stderr, "no input to replay\n");
    return 1;
  }
  std::printf("replayed %zu inputs\n", replayed);
  return 0;
}
