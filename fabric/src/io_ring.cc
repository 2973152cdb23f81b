#include "weft/fabric/io_ring.h"

#include <liburing.h>

#include <sched.h>

#include <cerrno>
#include <cstring>

#include "weft/fabric/result.h"

namespace weft {

struct IoRing::Impl {
  io_uring ring{};
};

IoRing::IoRing() : impl_(std::make_unique<Impl>()) {}

IoRing::~IoRing() {
  if (!impl_) return;  // never set up (create() refused)
  // The kernel may still be using the caller's buffers: finish before they go.
  IoCompletion done[8];
  while (in_flight_ > 0) (void)reap(done, true);
  io_uring_queue_exit(&impl_->ring);
}

std::unique_ptr<IoRing> IoRing::create(unsigned entries, std::string* why) {
  std::unique_ptr<IoRing> ring(new IoRing());
  if (const int error = io_uring_queue_init(entries, &ring->impl_->ring, 0); error < 0) {
    if (why != nullptr) *why = std::string("io_uring_queue_init: ") + std::strerror(-error);
    ring->impl_.reset();
    return nullptr;
  }
  return ring;
}

bool IoRing::write(int fd, std::span<const std::byte> bytes, std::uint64_t offset, std::uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(&impl_->ring);
  if (sqe == nullptr) return false;
  io_uring_prep_write(sqe, fd, bytes.data(), static_cast<unsigned>(bytes.size()), offset);
  io_uring_sqe_set_data64(sqe, tag);
  return submit_queued(sqe);
}

bool IoRing::read(int fd, std::span<std::byte> into, std::uint64_t offset, std::uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(&impl_->ring);
  if (sqe == nullptr) return false;
  io_uring_prep_read(sqe, fd, into.data(), static_cast<unsigned>(into.size()), offset);
  io_uring_sqe_set_data64(sqe, tag);
  return submit_queued(sqe);
}

bool IoRing::submit_queued(void* queued) {
  int submitted;
  do {
    submitted = io_uring_submit(&impl_->ring);
  } while (submitted == -EINTR);
  ++in_flight_;
  if (submitted >= 1) return true;
  // The entry stays queued and would go with the next submit: it becomes a no-op that reap()
  // drops (tag 0), since the caller moves these bytes itself.
  auto* last = static_cast<io_uring_sqe*>(queued);
  io_uring_prep_nop(last);
  io_uring_sqe_set_data64(last, 0);
  return false;
}

std::size_t IoRing::reap(std::span<IoCompletion> out, bool wait) {
  std::size_t got = 0;
  while (got < out.size() && in_flight_ > 0) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(&impl_->ring, &cqe) != 0 || cqe == nullptr) {
      if (!wait || got > 0) break;
      // Submits whatever a failed submit left queued, then sleeps for a completion. The kernel
      // owns the callers' buffers until each request completes, so there is no giving up: a
      // busy ring is waited out; any other error is our misuse of the ring.
      const int error = io_uring_submit_and_wait(&impl_->ring, 1);
      if (error == -EBUSY || error == -EAGAIN) sched_yield();
      WEFT_CHECK(error >= 0 || error == -EINTR || error == -EBUSY || error == -EAGAIN, "io_uring_submit_and_wait failed");
      continue;
    }
    const std::uint64_t tag = io_uring_cqe_get_data64(cqe);
    const std::int32_t result = cqe->res;
    io_uring_cqe_seen(&impl_->ring, cqe);
    --in_flight_;
    if (tag != 0) out[got++] = IoCompletion{tag, result};
  }
  return got;
}

}  // namespace weft
