#include "weft/fabric/serial_worker.h"

#include <unistd.h>

#include <cstdint>
#include <utility>

#include "weft/fabric/thread_name.h"

namespace weft {

SerialWorker::SerialWorker(const char* name, int wake_fd) : wake_fd_(wake_fd), thread_([this, name] { run(name); }) {}

SerialWorker::~SerialWorker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  added_.notify_one();
  thread_.join();
}

void SerialWorker::add(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(job));
  }
  added_.notify_one();
}

bool SerialWorker::stopping() const {
  std::lock_guard lock(mutex_);
  return stopping_;
}

void SerialWorker::run(const char* name) {
  name_this_thread(name);
  std::unique_lock lock(mutex_);
  while (true) {
    added_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    std::function<void()> job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    job();
    if (wake_fd_ >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(wake_fd_, &one, sizeof one);  // fails only on overflow, which still wakes the loop
    }
    lock.lock();
  }
}

}  // namespace weft
