// A thread that runs jobs one at a time, in the order they were added, for an event loop that
// must not wait on a disk or on the cluster's store (the Kafka listener's offset commits and
// topic admin, the local server's topic and offset requests). After each job it writes 1 to
// `wake_fd` (an eventfd; -1: none) so the loop looks for the outcome.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace weft {

class SerialWorker {
 public:
  // `name` names the thread (name_this_thread: 15 characters at most).
  SerialWorker(const char* name, int wake_fd);
  ~SerialWorker();  // finishes the job under way; the ones still queued are dropped, never run
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  void add(std::function<void()> job);

  // True once the destructor has begun: a long job (one polling the cluster's store) may give up
  // early, since nothing will wait for its outcome.
  bool stopping() const;

 private:
  void run(const char* name);

  const int wake_fd_;
  mutable std::mutex mutex_;
  std::condition_variable added_;
  std::deque<std::function<void()>> queue_;  // guarded by mutex_
  bool stopping_ = false;                    // guarded by mutex_
  std::thread thread_;                       // last: starts once the rest is built
};

}  // namespace weft
