// A process with only a few file descriptors left, for tests of what runs out of them: the soft
// limit is lowered (to at most 512, so filling it stays quick) and the rest filled with
// /dev/null; both undone when it goes.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace weft::test {

class DescriptorsUsedUp {
 public:
  explicit DescriptorsUsedUp(std::size_t left_free) {
    if (::getrlimit(RLIMIT_NOFILE, &limits_) != 0) return;
    const rlimit lowered{std::min<rlim_t>(limits_.rlim_cur, 512), limits_.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &lowered) != 0) return;
    lowered_ = true;
    for (int i = 0; i < 100'000; ++i) {
      const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd < 0) break;
      fillers_.push_back(fd);
    }
    if (fillers_.size() < left_free) return;
    for (std::size_t i = 0; i < left_free; ++i) {
      ::close(fillers_.back());
      fillers_.pop_back();
    }
    ready_ = true;
  }
  ~DescriptorsUsedUp() { release(); }
  DescriptorsUsedUp(const DescriptorsUsedUp&) = delete;
  DescriptorsUsedUp& operator=(const DescriptorsUsedUp&) = delete;

  // Whether the process was left with exactly the descriptors asked for.
  bool ready() const noexcept { return ready_; }
  // Gives the descriptors and the limit back (before the destructor, to check what follows).
  void release() {
    for (const int fd : fillers_) ::close(fd);
    fillers_.clear();
    if (lowered_) (void)::setrlimit(RLIMIT_NOFILE, &limits_);
    lowered_ = false;
  }

 private:
  rlimit limits_{};
  std::vector<int> fillers_;
  bool lowered_ = false;
  bool ready_ = false;
};

}  // namespace weft::test
