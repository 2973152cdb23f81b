// Whether this kernel lets processes use io_uring (a seccomp profile may still refuse it): tests
// that expect the io_uring path only where it is allowed.
#pragma once

#include <fstream>

namespace weft::test {

inline bool io_uring_allowed() {
  std::ifstream in("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  return !(in >> disabled) || disabled == 0;
}

}  // namespace weft::test
