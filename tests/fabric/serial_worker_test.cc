// SerialWorker: jobs run one at a time in the order they came, each followed by a wake-up of
// the loop's eventfd; destruction waits for the job under way and drops the jobs still queued.
#include "weft/fabric/serial_worker.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "weft/fabric/shared_memory.h"  // UniqueFd

namespace weft {
namespace {

// Reads the eventfd's count within 5 s (0: nothing came).
std::uint64_t wakeups(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 5'000) <= 0) return 0;
  std::uint64_t count = 0;
  return ::read(fd, &count, sizeof count) == static_cast<ssize_t>(sizeof count) ? count : 0;
}

TEST(SerialWorker, RunsJobsInOrderAndWakesTheLoopAfterEach) {
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(wake.valid());
  std::vector<int> ran;  // written by the worker only, read after it is gone
  std::uint64_t woken = 0;
  {
    SerialWorker worker("weft-test-work", wake.get());
    for (int i = 0; i < 100; ++i) worker.add([&ran, i] { ran.push_back(i); });
    for (int round = 0; round < 100 && woken < 100; ++round) woken += wakeups(wake.get());
  }
  EXPECT_EQ(woken, 100u);
  ASSERT_EQ(ran.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(ran[static_cast<std::size_t>(i)], i);
}

TEST(SerialWorker, GoingAwayWaitsForTheJobUnderWay) {
  std::promise<void> started;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> finished{0};
  auto worker = std::make_unique<SerialWorker>("weft-test-work", -1);
  worker->add([&] {
    started.set_value();
    released.wait();
    finished.fetch_add(1);
  });
  ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto gone = std::async(std::launch::async, [&] { worker.reset(); });
  EXPECT_EQ(gone.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout) << "it did not wait for the job under way";
  release.set_value();
  ASSERT_EQ(gone.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(finished.load(), 1);
}

TEST(SerialWorker, GoingAwayDropsTheJobsStillQueued) {
  std::promise<void> started;
  std::atomic<bool> saw_stopping{false};
  std::atomic<int> later_jobs_run{0};
  auto worker = std::make_unique<SerialWorker>("weft-test-work", -1);
  SerialWorker* const raw = worker.get();
  EXPECT_FALSE(raw->stopping());
  worker->add([&] {
    started.set_value();
    // The job under way holds the worker until its destructor has begun (bounded: 5 s)
    for (int i = 0; i < 5'000 && !raw->stopping(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    saw_stopping.store(raw->stopping());
  });
  for (int i = 0; i < 10; ++i) worker->add([&] { later_jobs_run.fetch_add(1); });
  ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto gone = std::async(std::launch::async, [&] { worker.reset(); });
  ASSERT_EQ(gone.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(saw_stopping.load()) << "the job under way never saw the worker stopping";
  EXPECT_EQ(later_jobs_run.load(), 0) << "jobs queued behind it ran after the destructor began";
}

}  // namespace
}  // namespace weft
