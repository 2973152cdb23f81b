// Files for the storage fuzzers and their seed programs: a scratch folder removed with what it
// holds, and whole files written and read. Set-up failures trap: a fuzzer that cannot write its
// input has learnt nothing about the code under test.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace weft::fuzz {

class ScratchDir {
 public:
  // `pattern_prefix`: a path prefix for mkdtemp, e.g. "/dev/shm/weft-segment-fuzz-" (tmpfs: no
  // disk I/O per input).
  explicit ScratchDir(const std::string& pattern_prefix) {
    std::string pattern = pattern_prefix + "XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) __builtin_trap();
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

// Writes `parts` one after another as the whole of `path`.
inline void write_file(const std::string& path, std::initializer_list<std::span<const std::uint8_t>> parts) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) __builtin_trap();
  for (std::span<const std::uint8_t> part : parts) {
    for (std::size_t done = 0; done < part.size();) {
      const ssize_t n = ::write(fd, part.data() + done, part.size() - done);
      if (n <= 0) __builtin_trap();
      done += static_cast<std::size_t>(n);
    }
  }
  ::close(fd);
}

inline std::vector<std::uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace weft::fuzz
