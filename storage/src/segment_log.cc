#include "weft/storage/segment_log.h"

#include "weft/fabric/compression.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <span>
#include <system_error>
#include <thread>

#include "weft/fabric/crc32c.h"
#include "weft/fabric/file.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/thread_name.h"
#include "segment_log_test_hooks.h"

namespace weft::storage {
namespace {

constexpr const char* kRecoveryPointFile = "/recovery-point";
constexpr const char* kEpochsFile = "/leader-epoch-checkpoint";

// "1 <offset> <crc32c of the text before it, hex>": a torn or foreign file reads as none.
std::string recovery_point_text(Offset offset) {
  const std::string body = "1 " + std::to_string(offset.value);
  char crc[16];
  std::snprintf(crc, sizeof(crc), "%08x", crc32c(std::as_bytes(std::span(body.data(), body.size()))));
  return body + " " + crc + "\n";
}

Offset read_recovery_point(const std::string& dir) {
  const Result<std::string> text = read_small_file(dir + kRecoveryPointFile, 64);
  if (!text.ok()) return Offset{-1};
  std::istringstream in(*text);
  std::string version, offset, crc;
  if (!(in >> version >> offset >> crc) || version != "1") return Offset{-1};
  std::int64_t value = -1;
  const auto [end, parse_error] = std::from_chars(offset.data(), offset.data() + offset.size(), value);
  if (parse_error != std::errc{} || end != offset.data() + offset.size() || value < 0) return Offset{-1};
  return recovery_point_text(Offset{value}) == version + " " + offset + " " + crc + "\n" ? Offset{value} : Offset{-1};
}

constexpr std::string_view kEpochsHeader = "weft-leader-epochs 1";
constexpr std::size_t kMaxEpochsFileBytes = std::size_t{16} << 20;

// A header line, the count, then `epoch start` per line.
std::string epochs_text(std::span<const EpochStart> epochs) {
  std::string text(kEpochsHeader);
  text += "\n" + std::to_string(epochs.size()) + "\n";
  for (const EpochStart& e : epochs) text += std::to_string(e.epoch) + " " + std::to_string(e.start.value) + "\n";
  return text;
}

// kNotFound without a file; kCorrupt for one that is not exactly what epochs_text wrote.
Result<std::vector<EpochStart>> read_epochs_file(const std::string& path) {
  WEFT_TRY(const std::string text, read_small_file(path, kMaxEpochsFileBytes));
  auto bad = [&](const std::string& why) { return Error{Errc::kCorrupt, path + ": " + why}; };
  std::string_view rest = text;
  auto next_line = [&](std::string_view& line) {
    const std::size_t eol = rest.find('\n');
    if (eol == std::string_view::npos) return false;
    line = rest.substr(0, eol);
    rest.remove_prefix(eol + 1);
    return true;
  };
  auto number = [](std::string_view field, auto& out) {
    const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), out);
    return error == std::errc() && end == field.data() + field.size() && !field.empty();
  };
  std::string_view line;
  if (!next_line(line) || line != kEpochsHeader) return bad("not an epoch history (header)");
  std::uint64_t count = 0;
  if (!next_line(line) || !number(line, count) || count > text.size() / 4) return bad("bad entry count");
  std::vector<EpochStart> epochs;
  epochs.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    if (!next_line(line)) return bad("fewer entries than its count");
    const std::size_t space = line.find(' ');
    EpochStart e;
    if (space == std::string_view::npos || !number(line.substr(0, space), e.epoch) || !number(line.substr(space + 1), e.start.value))
      return bad("entry " + std::to_string(i) + " is not `epoch start`");
    epochs.push_back(e);
  }
  if (!rest.empty()) return bad("bytes after its last entry");
  return epochs;
}

// The folder's history file made durably `text`, or durably absent without one.
Result<void> write_epochs_file(const std::string& dir, const std::optional<std::string>& text) {
  if (text) return replace_file(dir + kEpochsFile, *text);
  if (::unlink((dir + kEpochsFile).c_str()) != 0 && errno != ENOENT) return os_error(Errc::kIo, "removing " + dir + kEpochsFile, errno);
  return sync_directory(dir);
}

constexpr std::size_t kMaxNameBytes = 255;  // NAME_MAX on Linux file systems
constexpr std::string_view kDeleteTail = "-delete";
constexpr std::size_t kNonceDigits = 16;
constexpr std::size_t kDeleteSuffixBytes = 1 + kNonceDigits + kDeleteTail.size();  // ".<16 hex digits>-delete"

// Ends in "-delete", which no partition folder (`<topic>-<number>`) does. The clock as well as
// the pid: a pid repeats across restarts (as pid 1 in a container), folders of earlier runs may
// still be there.
std::string deletion_suffix() {
  static std::atomic<std::uint64_t> removals{0};
  const std::uint64_t nonce = (static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) << 16) ^
                              (static_cast<std::uint64_t>(::getpid()) << 40) ^ removals.fetch_add(1, std::memory_order_relaxed);
  char text[kDeleteSuffixBytes + 1];
  std::snprintf(text, sizeof text, ".%016llx-delete", static_cast<unsigned long long>(nonce));
  return text;
}

// Whether `name` ends in a deletion suffix (".<16 hex digits>-delete").
bool has_deletion_suffix(std::string_view name) {
  if (name.size() <= kDeleteSuffixBytes || !name.ends_with(kDeleteTail)) return false;
  const std::string_view dot_nonce = name.substr(name.size() - kDeleteSuffixBytes, 1 + kNonceDigits);
  return dot_nonce[0] == '.' &&
         std::all_of(dot_nonce.begin() + 1, dot_nonce.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

// A retired segment file: a segment's name (20 digits and .log, .index or .timeindex), then the
// deletion suffix. Nothing else in a partition folder is deleted for its name.
bool is_retired_segment_file(std::string_view name) {
  if (!has_deletion_suffix(name)) return false;
  const std::string_view file = name.substr(0, name.size() - kDeleteSuffixBytes);
  if (file.size() < 21 || !std::all_of(file.begin(), file.begin() + 20, [](char c) { return c >= '0' && c <= '9'; })) return false;
  const std::string_view kind = file.substr(20);
  return kind == ".log" || kind == ".index" || kind == ".timeindex";
}

// One thread per process deletes what logs put aside: removed logs' folders, each once its log
// has closed its files, and retired segments' files after a delay. Nothing else pays for freeing
// a large file's blocks (up to a second per GiB on a discard mount): not the node's maintenance
// thread under a log's lock, nor a listener closing a reader's descriptor of a deleted file.
// Never destroyed: it may still be deleting while the process exits (what is left, the next start
// deletes).
class LogDeleter {
 public:
  static LogDeleter& instance() {
    static LogDeleter* const deleter = new LogDeleter();
    return *deleter;
  }

  // A removed log's folder, deleted once `owner` expires.
  void add_folder(std::string dir, std::weak_ptr<const void> owner) {
    const auto now = Clock::now();
    add({Pending{std::move(dir), std::move(owner), true, now, now}});
  }

  // Retired files, deleted `delay_ms` from now (or sooner, when a wait asks).
  void add_files(std::vector<std::string> paths, std::int64_t delay_ms) {
    const auto now = Clock::now();
    std::vector<Pending> files;
    for (std::string& path : paths) files.push_back(Pending{std::move(path), {}, false, now, now + std::chrono::milliseconds(delay_ms)});
    add(std::move(files));
  }

  bool wait_until_empty(int timeout_ms) {
    std::unique_lock lock(mutex_);
    ++hurry_;  // the files' delays are waived meanwhile
    changed_.notify_all();
    const bool empty = changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return queue_.empty() && busy_ == 0; });
    --hurry_;
    return empty;
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    std::string path;
    std::weak_ptr<const void> owner;  // a folder's log (files have none)
    bool folder = false;
    Clock::time_point since;
    Clock::time_point not_before;
  };
  static constexpr auto kMaxWait = std::chrono::minutes(1);  // then the folder goes, open or not

  void add(std::vector<Pending> entries) {
    {
      std::lock_guard lock(mutex_);
      for (Pending& entry : entries) queue_.push_back(std::move(entry));
      start_locked();
    }
    changed_.notify_all();
  }

  void start_locked() {
    if (started_) return;
    try {
      std::thread([this] { run(); }).detach();
      started_ = true;
    } catch (const std::system_error&) {
      // No thread to be had: the next add tries again; wait_until_empty reports what stays.
    }
  }

  bool ready(const Pending& p, Clock::time_point now) const {
    if (p.folder) return p.owner.expired() || now - p.since >= kMaxWait;
    return hurry_ > 0 || now >= p.not_before;
  }

  void run() {
    name_this_thread("weft-delete");
    std::unique_lock lock(mutex_);
    for (;;) {
      const auto now = Clock::now();
      auto next = std::find_if(queue_.begin(), queue_.end(), [&](const Pending& p) { return ready(p, now); });
      if (next == queue_.end()) {
        if (queue_.empty()) {
          changed_.wait(lock);
        } else {
          // Owners expire without a word: look again every 10 ms while a folder waits for one;
          // files wake it when their time comes.
          auto until = now + std::chrono::hours(1);
          for (const Pending& p : queue_) until = std::min(until, p.folder ? now + std::chrono::milliseconds(10) : p.not_before);
          changed_.wait_until(lock, until);
        }
        continue;
      }
      const Pending doomed = std::move(*next);
      queue_.erase(next);
      ++busy_;
      lock.unlock();
      if (doomed.folder) {
        std::error_code ec;
        std::filesystem::remove_all(doomed.path, ec);
        if (ec) log(LogLevel::kWarn, "a removed log's folder stays", {{"dir", doomed.path}, {"error", ec.message()}});
      } else if (::unlink(doomed.path.c_str()) != 0 && errno != ENOENT) {  // ENOENT: its folder went first
        log(LogLevel::kWarn, "a retired segment file stays", {{"path", doomed.path}, {"error", std::strerror(errno)}});
      }
      lock.lock();
      --busy_;
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Pending> queue_;
  int busy_ = 0;
  int hurry_ = 0;  // waits under way
  bool started_ = false;
};

}  // namespace

struct SegmentLog::ClosedSegmentSyncs {
  std::mutex mutex;
  std::condition_variable done;
  std::uint64_t generation = 0;  // moves when the log's segments change under the syncs
  int pending = 0;
  // Set once a sync failed (the syncer's, or the log's own): the kernel may have dropped the
  // pages it could not write, and it reports that to each open file once, so a later fdatasync
  // may succeed over them. The log takes nothing more and no later sync succeeds (kDataLoss).
  std::atomic<bool> failed{false};
  std::string failure;  // under mutex
  // The epoch history (save_epochs, load_epochs): the newest saved, else what the folder's file
  // and the batches read through said at opening. A kWithTheLog save stays here until the syncer
  // writes and syncs it, before the recovery point moves past the batches it names.
  std::mutex epochs_file_mutex;  // the file's writes, each of the newest history; before epochs_mutex
  std::mutex epochs_mutex;
  // Under epochs_mutex: the history (an error: none), whether the file on disk, synced, may differ
  // from it (holding another, or being there when none is), and one more per change.
  Result<std::vector<EpochStart>> epochs{Error{Errc::kNotFound, "no epoch history was saved"}};
  bool epochs_dirty = false;
  std::uint64_t epochs_version = 0;

  void fail(std::string why) {  // under mutex
    if (failed.load(std::memory_order_relaxed)) return;
    failure = std::move(why);
    failed.store(true, std::memory_order_release);  // pairs with the acquire in refusal()
  }
  // As fail(), for a closed segment's sync, told once: after the first failure the log takes
  // nothing more anyway (a failure of the log's own sync() is returned to its caller instead).
  void fail_closed_segment(const std::string& dir, std::string why) {  // under mutex
    if (!failed.load(std::memory_order_relaxed))
      weft::log(LogLevel::kError, "a closed segment could not be synced; its log takes nothing more", {{"dir", dir}, {"error", why}});
    fail(std::move(why));
  }
  // kDataLoss once a sync failed.
  Result<void> refusal() {
    if (!failed.load(std::memory_order_acquire)) [[likely]] return ok();
    std::lock_guard lock(mutex);
    return Error{Errc::kDataLoss, failure};
  }
};

namespace {

// Acquire/release: a hook set before a log rolls (or syncs) is the one its syncs call.
std::atomic<test_hooks::SyncHook> closed_segment_sync_hook{nullptr};
std::atomic<test_hooks::SyncHook> log_sync_hook{nullptr};
std::atomic<test_hooks::SyncHook> epochs_sync_hook{nullptr};

// One thread per process syncs the segments that logs closed: fdatasync of a closed segment's
// files, then the recovery point moved past it. At a roll the appends go on into the next
// segment meanwhile; through the page cache a closed segment may hold a GiB not yet on the
// disk, and syncing it inline held the log's writer (and every producer waiting on it) for
// seconds. Never destroyed, like the deleter.
class SegmentSyncer {
 public:
  struct Job {
    std::vector<UniqueFd> files;
    std::string dir;
    Offset point;
    std::uint64_t generation = 0;
    std::shared_ptr<SegmentLog::ClosedSegmentSyncs> syncs;
  };

  static SegmentSyncer& instance() {
    static SegmentSyncer* const syncer = new SegmentSyncer();
    return *syncer;
  }

  // Queues `job`; when no thread can be had, does it here instead (as the roll once did).
  void add(Job job) {
    {
      std::lock_guard lock(mutex_);
      if (!started_) {
        try {
          std::thread([this] { run(); }).detach();
          started_ = true;
        } catch (const std::system_error&) {
        }
      }
      if (started_) {
        queue_.push_back(std::move(job));
        added_.notify_one();
        return;
      }
    }
    carry_out(job);
  }

 private:
  // The files' fdatasync, then the point moved (or the failure kept, which stops the log).
  static void carry_out(Job& job) {
    int error = 0;
    if (const test_hooks::SyncHook hook = closed_segment_sync_hook.load(std::memory_order_acquire); hook != nullptr) {
      std::vector<int> files;
      for (const UniqueFd& file : job.files) files.push_back(file.get());
      error = hook(job.dir, files);
    }
    for (const UniqueFd& file : job.files)
      if (error == 0 && ::fdatasync(file.get()) != 0) error = errno;
    const std::string failure = error == 0 ? std::string() : "fdatasync of a closed segment in " + job.dir + ": " + std::strerror(error);
    {
      std::lock_guard state(job.syncs->mutex);
      if (!failure.empty()) {
        job.syncs->fail_closed_segment(job.dir, failure);
      } else if (!job.syncs->failed.load(std::memory_order_relaxed) && job.generation == job.syncs->generation &&
                 sync_epoch_history(job)) {
        // (Not after a failure: the log's own sync may have taken the kernel's one report of it
        // for these files, and this fdatasync then succeeded over the lost pages.)
        // Under the mutex, the epoch history's write too: a truncation, reset or removal moves
        // the generation first, and never sees this point (or an old history, in a folder made
        // again under the name) land after it. Failing that, the next start reads more:
        // nothing is lost.
        Result<void> marked = replace_file(job.dir + kRecoveryPointFile, recovery_point_text(job.point));
        if (!marked.ok()) log(LogLevel::kWarn, "recovery point not moved", {{"dir", job.dir}, {"reason", marked.error().message}});
      }
      --job.syncs->pending;
    }
    job.syncs->done.notify_all();
    job.files.clear();
  }

  // The epoch history saved with the log since its last sync, written and synced before the point
  // moves: a start trusts the file for the segments before the point, which it does not read.
  // False when it could not be (logged): the point stays, and the next start reads more. Under
  // the syncs' mutex.
  static bool sync_epoch_history(const Job& job) {
    SegmentLog::ClosedSegmentSyncs& s = *job.syncs;
    std::lock_guard file_lock(s.epochs_file_mutex);  // a truncation's save (kNow) waits for this one
    std::uint64_t version = 0;
    std::optional<std::string> text;  // none: no history, so no file
    {
      std::lock_guard lock(s.epochs_mutex);
      if (!s.epochs_dirty) return true;
      version = s.epochs_version;
      if (s.epochs.ok()) text = epochs_text(*s.epochs);
    }
    int error = 0;
    if (const test_hooks::SyncHook hook = epochs_sync_hook.load(std::memory_order_acquire); hook != nullptr) error = hook(job.dir, {});
    Result<void> done = error != 0 ? Result<void>(Error{Errc::kIo, std::strerror(error)}) : write_epochs_file(job.dir, text);
    if (!done.ok()) {
      log(LogLevel::kWarn, "the epoch history was not written and synced; the recovery point stays",
          {{"dir", job.dir}, {"error", done.error().message}});
      return false;
    }
    std::lock_guard lock(s.epochs_mutex);
    if (s.epochs_version == version) s.epochs_dirty = false;  // else a newer save waits for the next
    return true;
  }

  void run() {
    name_this_thread("weft-sync");
    std::unique_lock lock(mutex_);
    for (;;) {
      added_.wait(lock, [&] { return !queue_.empty(); });
      Job job = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      carry_out(job);  // the files close outside the syncer's lock
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable added_;
  std::deque<Job> queue_;
  bool started_ = false;
};

}  // namespace

namespace {

// A segment's indexes hold offsets as 32-bit deltas from its base (as Kafka's do): whether a batch
// at `base` whose last offset delta is `last_delta` ends beyond that reach of a segment at `from`.
bool beyond_index_reach(std::int64_t from, std::int64_t base, std::int32_t last_delta) {
  return base - from > std::int64_t{INT32_MAX} - std::max(last_delta, 0);
}

// The first batch's last offset delta in a segment's log file; nullopt when the file holds no
// whole batch header (a segment made just before a crash).
Result<std::optional<std::int32_t>> first_batch_last_delta(const std::string& path) {
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file.valid()) return os_error(Errc::kIo, "opening " + path, errno);
  std::array<std::byte, kBatchHeaderBytes> header{};
  const ssize_t got = ::pread(file.get(), header.data(), header.size(), 0);
  if (got < 0) return os_error(Errc::kIo, "reading " + path, errno);
  if (static_cast<std::size_t>(got) < header.size()) return std::optional<std::int32_t>();
  return std::optional<std::int32_t>(static_cast<std::int32_t>(wire::load_be32(header.data() + batch_field::kLastOffsetDelta)));
}

}  // namespace

Result<std::unique_ptr<SegmentLog>> SegmentLog::open(const std::string& dir, Offset start, SegmentLogOptions options,
                                                     SegmentLogRecovery* recovery) {
  if (options.segment_bytes < kBatchHeaderBytes || options.segment_bytes > std::uint64_t{INT32_MAX})
    return Error{Errc::kInvalidArgument, "segment.bytes must be between 61 and 2147483647"};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error{Errc::kIo, "creating " + dir + ": " + ec.message()};
  // Segments by base offset, from their 20-digit names; files of segments retired by a run that
  // stopped before deleting them go now; anything else in the folder is left be.
  std::vector<std::int64_t> bases;
  std::vector<std::string> retired;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_retired_segment_file(name)) retired.push_back(entry.path().string());
    if (name.size() != 24 || !name.ends_with(".log")) continue;
    std::int64_t base = 0;
    const auto [end, parse_error] = std::from_chars(name.data(), name.data() + 20, base);
    if (parse_error != std::errc{} || end != name.data() + 20 || base < 0) continue;
    // Named like a segment but not a file (a folder, a FIFO): not the node's, and reading it
    // would fail the partition or wait forever. Left be, as any other foreign entry.
    std::error_code type_ec;
    if (!entry.is_regular_file(type_ec)) {
      log(LogLevel::kWarn, "ignored an entry named like a segment that is not a regular file", {{"path", entry.path().string()}});
      continue;
    }
    bases.push_back(base);
  }
  if (ec) return Error{Errc::kIo, "listing " + dir + ": " + ec.message()};
  if (!retired.empty()) LogDeleter::instance().add_files(std::move(retired), 0);
  std::sort(bases.begin(), bases.end());
  std::unique_ptr<SegmentLog> log(new SegmentLog(dir, options));
  SegmentLogRecovery local;
  SegmentLogRecovery& found = recovery != nullptr ? *recovery : local;
  // The epoch history: the folder's file, and the epochs it does not name yet of the batches read
  // through below (saved with the log, a crash came before the syncer wrote them; they begin past
  // the point, which moves only after that write), added as the replica added them and written
  // as a save with the log is: before the point passes them.
  Result<std::vector<EpochStart>> epochs = read_epochs_file(dir + kEpochsFile);
  bool epochs_added = false;
  found.recovery_point = read_recovery_point(dir);
  // A point is always a segment's base: any other (a file left by a log deleted halfway and
  // made again) vouches for nothing.
  if (found.recovery_point.value >= 0 && !std::binary_search(bases.begin(), bases.end(), found.recovery_point.value))
    found.recovery_point = Offset{-1};
  for (std::size_t i = 0; i < bases.size(); ++i) {
    const bool last = i + 1 == bases.size();
    SegmentRecovery r;
    // Whole on disk when the recovery point moved past the next segment's base.
    const bool trusted = !last && found.recovery_point.value >= bases[i + 1];
    // Above the point, a closed segment may have lost the writes of its last seconds in a crash
    // (its sync runs after the roll): a tail that ends early is cut there too.
    WEFT_TRY(Segment segment, trusted ? Segment::open_trusted(dir, Offset{bases[i]}, &r, options.segment)
                                      : Segment::open(dir, Offset{bases[i]}, last, &r, options.segment, !last));
    if (r.trusted) ++found.trusted_segments;
    if (epochs.ok())
      for (const EpochStart& e : r.epochs) epochs_added = add_epoch(*epochs, e) || epochs_added;
    if (!log->segments_.empty() && segment.base_offset() < log->segments_.back()->next_offset())
      return Error{Errc::kCorrupt, segment.log_path() + " starts at offset " + std::to_string(bases[i]) +
                                       ", inside the segment before it (which ends at " +
                                       std::to_string(log->segments_.back()->next_offset().value) + ")"};
    ++found.segments;
    found.batches += r.batches;
    if (r.truncated_bytes > 0) {
      found.truncated_bytes = r.truncated_bytes;
      found.truncated_from = r.truncated_from;
      found.reason = r.reason;
    }
    // A closed segment above the point that ends at a batch boundary short of the next one's
    // base lost its last batches in a crash (write-back extends a file a batch at a time), since
    // a roll starts the next segment where the closed one ends; only a batch too far for the
    // indexes names its own segment, past a gap.
    bool lost_tail = false;
    if (!last && !trusted && r.truncated_bytes == 0 && segment.next_offset().value < bases[i + 1]) {
      WEFT_TRY(const std::optional<std::int32_t> delta, first_batch_last_delta(dir + "/" + segment_file_name(Offset{bases[i + 1]}, ".log")));
      const bool far = delta && beyond_index_reach(bases[i], bases[i + 1], *delta);
      if (!far) {
        lost_tail = true;
        found.truncated_from = segment.next_offset();
        found.reason = segment.log_path() + " ends at offset " + std::to_string(segment.next_offset().value) +
                       ", before the next segment's base " + std::to_string(bases[i + 1]) + ": its last batches were lost";
      }
    }
    if ((r.truncated_bytes > 0 || lost_tail) && !last) {
      // What follows a hole cannot be served: the later segments go, and this one is the last.
      std::vector<std::string> dropped;
      for (std::size_t j = i + 1; j < bases.size(); ++j) {
        if (lost_tail) {  // what is cut is the later segments' bytes (reported, and logged by the opener)
          std::error_code size_error;
          const std::uintmax_t size = std::filesystem::file_size(dir + "/" + segment_file_name(Offset{bases[j]}, ".log"), size_error);
          if (!size_error) found.truncated_bytes += size;
        }
        WEFT_TRY(std::vector<std::string> renamed, rename_segment_files_aside(dir, Offset{bases[j]}, deletion_suffix()));
        dropped.insert(dropped.end(), std::make_move_iterator(renamed.begin()), std::make_move_iterator(renamed.end()));
      }
      found.reason += "; the " + std::to_string(bases.size() - i - 1) + " later segments were dropped";
      // Before anything is appended after the cut: a crash must not bring them back beside it.
      WEFT_TRY_VOID(sync_directory(dir));
      LogDeleter::instance().add_files(std::move(dropped), 0);
      log->segments_.push_back(std::make_unique<Segment>(std::move(segment)));
      break;
    }
    if (!last) segment.seal();
    log->segments_.push_back(std::make_unique<Segment>(std::move(segment)));
  }
  if (log->segments_.empty()) {
    WEFT_TRY(Segment first, Segment::create(dir, start, options.segment));
    log->segments_.push_back(std::make_unique<Segment>(std::move(first)));
  }
  // A reopened active segment's age counts from now: its first batch's time is not kept.
  if (log->segments_.back()->size_bytes() > 0) log->active_since_ms_ = wall_clock_ms();
  log->closed_syncs_->epochs = std::move(epochs);
  log->closed_syncs_->epochs_dirty = epochs_added;
  return log;
}

Result<void> SegmentLog::append(std::span<const std::byte> batch) {
  std::lock_guard lock(mutex_);
  if (removed_) return Error{Errc::kFailedPrecondition, "the log at " + dir_ + " " + refusal_};
  WEFT_TRY_VOID(closed_syncs_->refusal());
  if (batch.size() < kBatchHeaderBytes) return Error{Errc::kInvalidArgument, "a batch shorter than its header"};
  const Offset base{wire::load_be64(batch.data() + batch_field::kBaseOffset)};
  const std::int32_t last_delta = wire::load_be32(batch.data() + batch_field::kLastOffsetDelta);
  Segment* active = segments_.back().get();
  const bool full = active->size_bytes() + batch.size() > options_.segment_bytes;
  const bool old = active_since_ms_ >= 0 && wall_clock_ms() - active_since_ms_ >= options_.segment_ms;
  // A batch beyond the reach of the active segment's indexes starts a segment of its own (a huge
  // compressed batch, a gap).
  const bool far = last_delta >= 0 && base >= active->base_offset() && beyond_index_reach(active->base_offset().value, base.value, last_delta);
  if (active->size_bytes() == 0 && far && base >= active->next_offset()) {
    // An empty segment cannot roll; one named by this batch's offset takes its place (a gap
    // between segments reads as one).
    WEFT_TRY(Segment next, Segment::create(dir_, base, options_.segment));
    WEFT_TRY_VOID(retire(*active));
    segments_.back() = std::make_unique<Segment>(std::move(next));
    active = segments_.back().get();
    active_since_ms_ = -1;
  }
  if (active->size_bytes() > 0 && (full || old || far)) {
    // Roll: the new segment starts where the closed one ends, so that segments meet and a closed
    // segment a crash left short is told from a gap (an aborted claim's offsets at the roll lie
    // in the new segment's head). Only a batch too far for the indexes' 32-bit deltas from there
    // names its own segment.
    if (base < active->next_offset())
      return Error{Errc::kInvalidArgument, "batch at offset " + std::to_string(base.value) + " is behind the log's next offset " +
                                               std::to_string(active->next_offset().value)};
    const Offset closed_end = active->next_offset();
    const Offset new_base = beyond_index_reach(closed_end.value, base.value, last_delta) ? base : closed_end;
    // A closed segment is all in its file before the next begins. A write that fails (a full
    // disk) fails this append, to be offered again. Its sync follows in the background (a crash
    // before it ends leaves a tail the next start cuts, with what came after, as Kafka does).
    WEFT_TRY_VOID(active->flush());
    active->seal();
    WEFT_TRY(Segment next, Segment::create(dir_, new_base, options_.segment));
    segments_.push_back(std::make_unique<Segment>(std::move(next)));
    sync_closed_segment(new_base);
    active = segments_.back().get();
    active_since_ms_ = -1;
  }
  WEFT_TRY_VOID(active->append(batch, leader_epoch()));
  if (active_since_ms_ < 0) active_since_ms_ = wall_clock_ms();
  return ok();
}

Result<void> SegmentLog::flush() {
  std::lock_guard lock(mutex_);
  return segments_.back()->flush();
}

Result<void> SegmentLog::sync() {
  // What to sync is taken under the lock (the writes reach the files, their handles duplicated);
  // the fdatasyncs run outside it: a slow disk then holds no reader (a Fetch behind the ring,
  // ListOffsets on the Kafka listener's loop) and no append. Closed segments whose background
  // sync may not have ended come too: everything appended before this call is durable when it
  // returns (an fdatasync of a synced file finds nothing to write). One sync at a time: two at
  // once could split the kernel's one report of an error between them, the second then
  // succeeding over lost pages.
  std::lock_guard one_at_a_time(sync_mutex_);
  struct Pending {
    std::shared_ptr<Segment> segment;  // kept alive, so never mistaken for a segment made since
    Segment::SyncTicket ticket;
  };
  std::vector<Pending> pending;
  // A segment taken out of the log meanwhile is destroyed here, under the lock, as everywhere else.
  auto release = [&] {
    std::lock_guard lock(mutex_);
    pending.clear();
  };
  bool closed_synced = false;
  {
    std::lock_guard lock(mutex_);
    WEFT_TRY_VOID(closed_syncs_->refusal());
    for (const auto& segment : segments_) {
      if (segment->log_synced()) continue;
      // A write that fails (a full disk) keeps its bytes for the next try; once written, the
      // ticket fails only in the fdatasync it falls back to, which stops the log.
      WEFT_TRY_VOID(segment->flush());
      Result<Segment::SyncTicket> ticket = segment->begin_sync();
      if (!ticket.ok()) {
        std::lock_guard syncs(closed_syncs_->mutex);
        closed_syncs_->fail(ticket.error().message);
        return ticket.error();
      }
      closed_synced = closed_synced || segment != segments_.back();
      if (ticket->file.valid()) pending.push_back(Pending{segment, std::move(*ticket)});
    }
  }
  for (const Pending& p : pending) {
    int error = 0;
    if (const test_hooks::SyncHook hook = log_sync_hook.load(std::memory_order_acquire); hook != nullptr) {
      const int file = p.ticket.file.get();
      error = hook(dir_, std::span<const int>(&file, 1));
    }
    if (error == 0 && ::fdatasync(p.ticket.file.get()) != 0) error = errno;
    if (error != 0) {
      // Not retried, and no later sync succeeds: the kernel may have dropped the pages it could
      // not write, and a second fdatasync would report success over them.
      Error failed = os_error(Errc::kIo, "fdatasync " + p.segment->log_path(), error);
      {
        std::lock_guard syncs(closed_syncs_->mutex);
        closed_syncs_->fail(failed.message);
      }
      release();
      return failed;
    }
  }
  {
    std::lock_guard lock(mutex_);
    for (Pending& p : pending) {
      // A segment taken out meanwhile (retention, a truncation) is not the log's any more; one
      // closed by a roll meanwhile was handed to the syncer too, whose sync this one waits for.
      if (std::find(segments_.begin(), segments_.end(), p.segment) == segments_.end()) continue;
      p.segment->end_sync(p.ticket.appends);
      closed_synced = closed_synced || p.segment != segments_.back();
    }
  }
  release();
  if (closed_synced) {
    // The syncer's fdatasync of the same open files may have taken the kernel's one report of an
    // error, so this one's success says nothing until that sync has ended too. The syncer never
    // takes mutex_.
    std::unique_lock syncs(closed_syncs_->mutex);
    closed_syncs_->done.wait(syncs, [&] { return closed_syncs_->pending == 0; });
  }
  return closed_syncs_->refusal();
}

SegmentLog::SegmentLog(std::string dir, SegmentLogOptions options)
    : dir_(std::move(dir)), options_(options), closed_syncs_(std::make_shared<ClosedSegmentSyncs>()) {}

SegmentLog::~SegmentLog() {
  if (removed_) return;  // its syncs move no point and keep no data that matters
  std::unique_lock lock(closed_syncs_->mutex);
  // Bounded: a disk that takes longer leaves the next start to read the segment through.
  closed_syncs_->done.wait_for(lock, std::chrono::seconds(30), [&] { return closed_syncs_->pending == 0; });
}

void SegmentLog::sync_closed_segment(Offset point) {
  // The closed segment's log and indexes, and the indexes of earlier ones rebuilt at open (no
  // point yet, or one that lagged): all on disk before the point passes them.
  // Earlier segments read back at open (above the point then) have their logs synced too.
  SegmentSyncer::Job job;
  for (std::size_t i = 0; i + 1 < segments_.size(); ++i) {
    const bool log = i + 2 == segments_.size() || segments_[i]->read_back_unsynced();
    if (!log && segments_[i]->indexes_durable()) continue;
    Result<std::vector<UniqueFd>> handles = segments_[i]->handles_to_sync(log);
    if (!handles.ok()) {
      // As a failed background sync does: the log takes nothing more, the point stays.
      std::lock_guard syncs(closed_syncs_->mutex);
      closed_syncs_->fail_closed_segment(dir_, handles.error().message);
      return;
    }
    for (UniqueFd& file : *handles) job.files.push_back(std::move(file));
  }
  job.dir = dir_;
  job.point = point;
  job.syncs = closed_syncs_;
  {
    std::lock_guard lock(closed_syncs_->mutex);
    job.generation = closed_syncs_->generation;
    ++closed_syncs_->pending;
  }
  SegmentSyncer::instance().add(std::move(job));
}

void test_hooks::set_closed_segment_sync_hook(SyncHook hook) noexcept {
  closed_segment_sync_hook.store(hook, std::memory_order_release);
}

void test_hooks::set_log_sync_hook(SyncHook hook) noexcept { log_sync_hook.store(hook, std::memory_order_release); }

void test_hooks::set_epochs_sync_hook(SyncHook hook) noexcept { epochs_sync_hook.store(hook, std::memory_order_release); }

void SegmentLog::cancel_closed_segment_syncs() {
  std::lock_guard lock(closed_syncs_->mutex);
  ++closed_syncs_->generation;
}

Result<void> SegmentLog::submit(bool more_coming) {
  std::lock_guard lock(mutex_);
  return segments_.back()->submit(more_coming);
}

Result<Offset> SegmentLog::written_offset() {
  std::lock_guard lock(mutex_);
  // Closed segments were synced whole when the log rolled past them.
  Segment& active = *segments_.back();
  WEFT_TRY_VOID(active.poll_writes());
  return active.written_next_offset();
}

Result<void> SegmentLog::save_epochs(std::span<const EpochStart> epochs, EpochSave how) {
  ClosedSegmentSyncs& s = *closed_syncs_;
  if (how == EpochSave::kWithTheLog) {  // no file system call: the syncer writes it
    std::lock_guard lock(s.epochs_mutex);
    s.epochs = std::vector<EpochStart>(epochs.begin(), epochs.end());
    s.epochs_dirty = true;
    ++s.epochs_version;
    return ok();
  }
  std::lock_guard file_lock(s.epochs_file_mutex);
  Result<void> saved = write_epochs_file(dir_, epochs_text(epochs));
  // A history left from before this cut would be wrong once the log moves on, which no reading
  // of its tail corrects: none is better, for good (if even that fails, the syncer tries again
  // before the point moves, and the next start reads the log through).
  const Result<void> removed = saved.ok() ? ok() : write_epochs_file(dir_, std::nullopt);
  std::lock_guard lock(s.epochs_mutex);
  if (saved.ok()) {
    s.epochs = std::vector<EpochStart>(epochs.begin(), epochs.end());
  } else {
    s.epochs = Error{Errc::kNotFound, dir_ + kEpochsFile + ": its last save failed"};
  }
  s.epochs_dirty = !removed.ok();
  ++s.epochs_version;
  return saved;
}

Result<std::vector<EpochStart>> SegmentLog::load_epochs() const {
  std::lock_guard lock(closed_syncs_->epochs_mutex);
  return closed_syncs_->epochs;
}

bool wait_for_log_deletions(int timeout_ms) { return LogDeleter::instance().wait_until_empty(timeout_ms); }

namespace {

// Takes a log's folder out of its place at once (renamed aside, then deleted in the background
// once `owner`, the files still open in it, is gone), so a log made again under the name starts
// empty.
Result<void> remove_log_folder(const std::string& dir, std::weak_ptr<const void> owner) {
  // The folder's name, cut so that the suffix fits NAME_MAX (a topic name may take 249 bytes).
  const std::filesystem::path folder(dir);
  const std::string name = folder.filename().string();
  const std::string doomed = (folder.parent_path() / (name.substr(0, kMaxNameBytes - kDeleteSuffixBytes) + deletion_suffix())).string();
  if (::rename(dir.c_str(), doomed.c_str()) != 0) {
    if (errno == ENOENT) return ok();  // never made (a log that failed to open before it had a folder)
    // In place, the point first: a crash halfway must not leave it to vouch for a new log's segments.
    ::unlink((dir + kRecoveryPointFile).c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    if (ec) return Error{Errc::kIo, "removing " + dir + ": " + ec.message()};
    return ok();
  }
  LogDeleter::instance().add_folder(doomed, std::move(owner));
  return ok();
}

// Where open_segment_logs keeps a partition's log.
std::string partition_log_folder(const std::string& data_dir, std::string_view topic, std::uint32_t partition) {
  return data_dir + "/" + std::string(topic) + "-" + std::to_string(partition);
}

}  // namespace

Result<void> SegmentLog::remove() {
  std::lock_guard lock(mutex_);
  removed_ = true;
  refusal_ = "was removed with its topic";
  cancel_closed_segment_syncs();
  segments_.resize(1);  // keep one so the other calls stay well defined; its files close with the log
  return remove_log_folder(dir_, open_files_);
}

Offset SegmentLog::start_offset() const {
  std::lock_guard lock(mutex_);
  return segments_.front()->base_offset();
}

Offset SegmentLog::next_offset() const {
  std::lock_guard lock(mutex_);
  return segments_.back()->next_offset();
}

Offset SegmentLog::synced_offset() const {
  std::lock_guard lock(mutex_);
  for (const auto& segment : segments_)
    if (!segment->log_synced()) return segment->base_offset();
  return segments_.back()->next_offset();
}

std::size_t SegmentLog::segment_count() const {
  std::lock_guard lock(mutex_);
  return segments_.size();
}

Segment* SegmentLog::segment_for(Offset offset) const {
  // The last segment whose base is at or before the offset; an offset in the gap at a
  // segment's end (skipped by an aborted claim) goes on in the next segment.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                             [](Offset o, const std::shared_ptr<Segment>& s) { return o < s->base_offset(); });
  if (it != segments_.begin()) --it;
  if (offset >= (*it)->next_offset() && std::next(it) != segments_.end()) ++it;
  return offset >= (*it)->next_offset() ? nullptr : it->get();
}

namespace {

Error before_start(Offset offset, Offset start) {
  return Error{Errc::kOutOfRange, "offset " + std::to_string(offset.value) + " is before the log's start; the earliest offset is " +
                                      std::to_string(start.value)};
}

}  // namespace

Result<std::size_t> SegmentLog::read(Offset offset, std::span<std::byte> out) const {
  std::lock_guard lock(mutex_);
  if (offset < segments_.front()->base_offset()) return before_start(offset, segments_.front()->base_offset());
  if (offset > segments_.back()->next_offset())
    return Error{Errc::kOutOfRange, "offset " + std::to_string(offset.value) + " is past the log's end, " +
                                        std::to_string(segments_.back()->next_offset().value)};
  Segment* segment = segment_for(offset);
  if (segment == nullptr) return std::size_t{0};  // the end of the log: nothing yet
  WEFT_TRY(const std::uint64_t position, segment->find(std::max(offset, segment->base_offset())));
  return segment->read(position, out);
}

Result<LogSlice> SegmentLog::slice(Offset offset, Offset until) {
  std::lock_guard lock(mutex_);
  if (removed_) return Error{Errc::kNotFound, "the log at " + dir_ + " " + refusal_};
  const Offset start = segments_.front()->base_offset();
  if (offset == kEarliestOffset) offset = start;
  if (offset < start) return before_start(offset, start);
  Segment* segment = segment_for(offset);
  if (segment == nullptr) segment = segments_.back().get();  // at the end: an empty slice of the active segment
  LogSlice slice;
  slice.offset = offset;
  if (offset < segment->next_offset()) {
    WEFT_TRY(slice.position, segment->find(std::max(offset, segment->base_offset())));
  } else {
    slice.position = segment->written_bytes();
  }
  slice.end = segment->written_bytes();
  slice.end_offset = segment->next_offset();
  if (until < slice.end_offset && offset < until) {
    // The batch reaching `until` starts the part not served: found as any lookup is, every
    // header on the way checked (a damaged one is kCorrupt, never a wrong bound).
    WEFT_TRY(slice.end, segment->find(std::max(until, segment->base_offset())));
    slice.end_offset = until;
  } else if (until <= offset) {
    slice.end = slice.position;
  }
  // Opened anew, read-only: the reader may be another process, and must not get a writable file.
  slice.file = UniqueFd(::open(segment->log_path().c_str(), O_RDONLY | O_CLOEXEC));
  if (!slice.file.valid()) return os_error(Errc::kIo, "opening " + segment->log_path(), errno);
  return slice;
}

Result<TimedOffset> SegmentLog::offset_for_timestamp(std::int64_t timestamp_ms) {
  std::lock_guard lock(mutex_);
  for (const auto& segment : segments_) {
    if (segment->max_timestamp() < timestamp_ms) continue;  // every batch in it is earlier
    WEFT_TRY(const std::uint64_t position, segment->find_time(timestamp_ms));
    // Kafka's ListOffsets answers with the first record at or after the time, not its batch; a
    // compressed batch (stored as the client sent it) is read inflated for that.
    WEFT_TRY(const std::vector<std::byte> bytes, segment->read_batch(position));
    WEFT_TRY(const BatchView view, BatchView::parse_header(bytes, true));
    std::vector<std::byte> inflated;
    if (view.compression() != Compression::kNone)
      WEFT_TRY_VOID(decompress_records(view.compression(), view.bytes().subspan(kBatchHeaderBytes), inflated));
    RecordReader reader = view.compression() != Compression::kNone ? RecordReader(view, inflated) : RecordReader(view);
    RecordView r;
    while (reader.next(r))
      if (r.timestamp_ms >= timestamp_ms) return TimedOffset{r.offset, r.timestamp_ms, view.partition_leader_epoch()};
    if (reader.failed()) return Error{Errc::kCorrupt, segment->log_path() + ": a batch's records do not decode at offset " + std::to_string(view.base_offset().value)};
    return TimedOffset{view.last_offset(), view.max_timestamp(), view.partition_leader_epoch()};
  }
  return Error{Errc::kNotFound, "no record in the log has a timestamp at or after " + std::to_string(timestamp_ms)};
}

Result<RetentionOutcome> SegmentLog::apply_retention(std::int64_t max_bytes, std::int64_t max_age_ms, std::int64_t now_ms, Offset keep_from) {
  std::lock_guard lock(mutex_);
  RetentionOutcome outcome;
  std::uint64_t total = 0;
  for (const auto& segment : segments_) total += segment->size_bytes();
  while (segments_.size() > 1 && !removed_) {
    Segment& oldest = *segments_.front();
    const bool too_big = max_bytes >= 0 && total > static_cast<std::uint64_t>(max_bytes) &&
                         total - oldest.size_bytes() >= static_cast<std::uint64_t>(max_bytes);
    // An empty segment's max timestamp is -1: old enough to go, but only once a later one exists.
    const bool too_old = max_age_ms >= 0 && oldest.max_timestamp() < now_ms - max_age_ms;
    if (!too_big && !too_old) break;
    if (segments_[1]->base_offset() > keep_from) break;  // it holds records past the bound
    // Readers holding the files keep reading them: they are renamed, and deleted a while later.
    WEFT_TRY_VOID(retire(oldest));
    total -= oldest.size_bytes();
    outcome.bytes_deleted += oldest.size_bytes();
    ++outcome.segments_deleted;
    segments_.erase(segments_.begin());
  }
  outcome.start_offset = segments_.front()->base_offset();
  return outcome;
}

std::uint64_t SegmentLog::size_bytes() const {
  std::lock_guard lock(mutex_);
  std::uint64_t total = 0;
  for (const auto& segment : segments_) total += segment->size_bytes();
  return total;
}

Result<Offset> SegmentLog::truncate(Offset end) {
  std::lock_guard lock(mutex_);
  if (removed_) return Error{Errc::kFailedPrecondition, "the log at " + dir_ + " " + refusal_};
  if (end >= segments_.back()->next_offset()) return segments_.back()->next_offset();
  if (end <= segments_.front()->base_offset()) {
    WEFT_TRY_VOID(restart_at(end));
    return end;
  }
  cancel_closed_segment_syncs();
  // Everything appended reaches the file first: no write in flight may land past the cut.
  WEFT_TRY_VOID(segments_.back()->flush());
  // The recovery point first: it must never vouch for a segment that is about to change. It
  // stays where it was if that is at or below the segment that will be the last.
  const Offset point = read_recovery_point(dir_);
  while (segments_.size() > 1 && segments_.back()->base_offset() >= end) {
    if (point.value >= 0 && point >= segments_.back()->base_offset()) ::unlink((dir_ + kRecoveryPointFile).c_str());
    WEFT_TRY_VOID(retire(*segments_.back()));
    segments_.pop_back();
  }
  // The segment holding `end` is cut at the batch holding it, then opened again as the active
  // segment (its indexes rebuilt from what is left, checked as at recovery).
  const Offset base = segments_.back()->base_offset();
  std::uint64_t cut = segments_.back()->written_bytes();
  if (end < segments_.back()->next_offset()) {
    WEFT_TRY(cut, segments_.back()->find(end));
  }
  const std::string path = segments_.back()->log_path();
  if (point.value >= 0 && point > base) ::unlink((dir_ + kRecoveryPointFile).c_str());
  // The old segment object stays until the cut one opens, so that a failure leaves the log
  // answering (stopped) rather than without segments. It holds nothing buffered (flushed above).
  auto cut_and_reopen = [&]() -> Result<Segment> {
    if (::truncate(path.c_str(), static_cast<off_t>(cut)) != 0) return os_error(Errc::kIo, "truncating " + path, errno);
    WEFT_TRY(Segment segment, Segment::open(dir_, base, true, nullptr, options_.segment));
    WEFT_TRY_VOID(segment.sync());
    return Result<Segment>(std::move(segment));
  };
  Result<Segment> reopened = cut_and_reopen();
  if (!reopened.ok()) return stop_after(reopened.error());
  segments_.back() = std::make_unique<Segment>(std::move(reopened.value()));
  WEFT_TRY_VOID(sync_directory(dir_));
  active_since_ms_ = segments_.back()->size_bytes() > 0 ? wall_clock_ms() : -1;
  const Offset next = segments_.back()->next_offset();
  forget_epochs_from(next);
  return next;
}

void SegmentLog::forget_epochs_from(Offset end) {
  ClosedSegmentSyncs& s = *closed_syncs_;
  std::lock_guard lock(s.epochs_mutex);
  if (!s.epochs.ok() || std::erase_if(*s.epochs, [&](const EpochStart& e) { return e.start >= end; }) == 0) return;
  // Written with the log, unless (as a replica does) the caller saves the cut history at once.
  s.epochs_dirty = true;
  ++s.epochs_version;
}

Result<void> SegmentLog::reset(Offset start) {
  std::lock_guard lock(mutex_);
  if (removed_) return Error{Errc::kFailedPrecondition, "the log at " + dir_ + " " + refusal_};
  return restart_at(start);
}

Result<void> SegmentLog::restart_at(Offset start) {
  if (start.value < 0) return Error{Errc::kInvalidArgument, "a log cannot start at a negative offset"};
  cancel_closed_segment_syncs();
  ::unlink((dir_ + kRecoveryPointFile).c_str());
  forget_epochs_from(start);
  for (auto& segment : segments_) {
    (void)segment->flush();  // nothing may still be written into a file being deleted
    if (Result<void> removed = retire(*segment); !removed.ok()) return stop_after(removed.error());
  }
  auto create = [&]() -> Result<Segment> {
    WEFT_TRY(Segment segment, Segment::create(dir_, start, options_.segment));
    WEFT_TRY_VOID(segment.sync());
    return Result<Segment>(std::move(segment));
  };
  Result<Segment> first = create();
  if (!first.ok()) return stop_after(first.error());
  segments_.clear();
  segments_.push_back(std::make_unique<Segment>(std::move(first.value())));
  active_since_ms_ = -1;
  return sync_directory(dir_);
}

Result<void> SegmentLog::retire(Segment& segment) {
  WEFT_TRY(std::vector<std::string> retired, segment.retire_files(deletion_suffix()));
  LogDeleter::instance().add_files(std::move(retired), options_.file_delete_delay_ms);
  return ok();
}

Error SegmentLog::stop_after(Error error) {
  // The log's files no longer match its segments: it takes nothing more (as a removed one) and
  // says why; the segments it keeps only answer the other calls.
  log(LogLevel::kError, "partition log stopped: a truncation failed", {{"dir", dir_}, {"error", error.message}});
  removed_ = true;
  refusal_ = "takes nothing more: a truncation failed (" + error.message + ")";
  return Error{Errc::kDataLoss, "the log at " + dir_ + " could not be truncated and takes nothing more: " + error.message};
}

RemovePartitionLog remove_segment_logs(std::string data_dir) {
  return [data_dir = std::move(data_dir)](std::string_view topic, std::uint32_t partition) -> Result<void> {
    return remove_log_folder(partition_log_folder(data_dir, topic, partition), {});
  };
}

void use_segment_logs(NodeOptions& options, const std::string& data_dir, SegmentOptions segment) {
  options.open_log = open_segment_logs(data_dir, segment);
  options.remove_unopened_log = remove_segment_logs(data_dir);
}

OpenPartitionLog open_segment_logs(std::string data_dir, SegmentOptions segment) {
  // Folders of logs removed by an earlier run that stopped before it had deleted them.
  std::error_code ec;
  for (std::filesystem::directory_iterator it(data_dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (has_deletion_suffix(it->path().filename().string()) && it->is_directory(type_ec)) LogDeleter::instance().add_folder(it->path().string(), {});
  }
  return [data_dir = std::move(data_dir), segment](std::string_view topic, std::uint32_t partition,
                                          const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
    const std::string dir = partition_log_folder(data_dir, topic, partition);
    SegmentLogOptions options;
    options.segment = segment;
    options.segment_bytes = static_cast<std::uint64_t>(config.segment_bytes);
    options.segment_ms = config.segment_ms;
    SegmentLogRecovery recovery;
    WEFT_TRY(std::unique_ptr<SegmentLog> opened, SegmentLog::open(dir, Offset{0}, options, &recovery));
    if (recovery.truncated_bytes > 0)
      log(LogLevel::kWarn, "partition log tail cut",
          {{"dir", dir}, {"from_offset", std::to_string(recovery.truncated_from.value)},
           {"bytes", std::to_string(recovery.truncated_bytes)}, {"reason", recovery.reason}});
    return std::unique_ptr<PartitionLog>(std::move(opened));
  };
}

}  // namespace weft::storage
