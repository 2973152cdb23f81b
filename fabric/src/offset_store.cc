#include "weft/fabric/offset_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "weft/fabric/crc32c.h"
#include "weft/fabric/file.h"
#include "weft/fabric/log.h"
#include "weft/fabric/shared_memory.h"

namespace weft {
namespace {

constexpr char kMagic[8] = {'W', 'E', 'F', 'T', 'O', 'F', 'S', '1'};
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kHeaderBytes = sizeof(kMagic) + 4 + 4;
constexpr std::size_t kCrcBytes = 4;
constexpr std::string_view kSuffix = ".offsets";
constexpr std::string_view kTempSuffix = ".offsets.tmp";

// A group's entries by topic, then partition.
using Partitions = std::map<std::uint32_t, CommittedOffset>;
using Group = std::map<std::string, Partitions, std::less<>>;

// Kafka's character rule for topic names, shared here by group ids (which become file names).
Result<void> validate_name(std::string_view kind, std::string_view name, std::size_t max_bytes) {
  if (name.empty() || name.size() > max_bytes)
    return Error{Errc::kInvalidArgument, std::string(kind) + " must be 1 to " + std::to_string(max_bytes) +
                                             " characters long (got " + std::to_string(name.size()) + ")"};
  if (name == "." || name == "..") return Error{Errc::kInvalidArgument, std::string(kind) + " cannot be '.' or '..'"};
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok)
      return Error{Errc::kInvalidArgument,
                   std::string(kind) + " '" + std::string(name) + "' may hold only letters, digits, '.', '_' and '-'"};
  }
  return ok();
}

Result<void> validate_entry(const CommittedOffset& e) {
  WEFT_TRY_VOID(validate_name("topic name", e.topic, kMaxOffsetTopicBytes));
  const std::string where = e.topic + "/" + std::to_string(e.partition);
  if (e.offset.value < 0)
    return Error{Errc::kInvalidArgument, "offset " + std::to_string(e.offset.value) + " for " + where + " is negative"};
  if (e.metadata.size() > kMaxOffsetMetadataBytes)
    return Error{Errc::kInvalidArgument, "metadata for " + where + " is " + std::to_string(e.metadata.size()) +
                                             " bytes, more than " + std::to_string(kMaxOffsetMetadataBytes)};
  return ok();
}

template <class UInt>
void put(std::vector<std::byte>& out, UInt value) {
  for (std::size_t i = 0; i < sizeof(UInt); ++i) out.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xff));
}

void put_bytes(std::vector<std::byte>& out, std::string_view bytes) {
  const auto* first = reinterpret_cast<const std::byte*>(bytes.data());
  out.insert(out.end(), first, first + bytes.size());
}

std::vector<std::byte> encode(const Group& group) {
  std::size_t size = kHeaderBytes + kCrcBytes;
  std::size_t count = 0;
  for (const auto& [topic, partitions] : group) {
    for (const auto& [partition, e] : partitions) size += 2 + topic.size() + 4 + 8 + 8 + 2 + e.metadata.size();
    count += partitions.size();
  }
  std::vector<std::byte> out;
  out.reserve(size);
  put_bytes(out, std::string_view(kMagic, sizeof(kMagic)));
  put(out, kVersion);
  // The caller keeps the file under 64 MiB, so the count (>= 25 bytes each) fits.
  put(out, static_cast<std::uint32_t>(count));
  for (const auto& [topic, partitions] : group) {
    for (const auto& [partition, e] : partitions) {
      put(out, static_cast<std::uint16_t>(topic.size()));
      put_bytes(out, topic);
      put(out, partition);
      put(out, static_cast<std::uint64_t>(e.offset.value));
      put(out, static_cast<std::uint64_t>(e.commit_time_ms));
      put(out, static_cast<std::uint16_t>(e.metadata.size()));
      put_bytes(out, e.metadata);
    }
  }
  put(out, crc32c(out));
  return out;
}

// Reads little-endian fields from a buffer; every read checks the bytes are there first.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}

  template <class UInt>
  bool get(UInt& value) {
    if (remaining() < sizeof(UInt)) return false;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(UInt); ++i) v |= std::to_integer<std::uint64_t>(bytes_[pos_ + i]) << (8 * i);
    value = static_cast<UInt>(v);
    pos_ += sizeof(UInt);
    return true;
  }
  bool get_string(std::size_t size, std::string& out) {
    if (remaining() < size) return false;
    out.assign(reinterpret_cast<const char*>(bytes_.data() + pos_), size);
    pos_ += size;
    return true;
  }
  bool skip(std::size_t size) {
    if (remaining() < size) return false;
    pos_ += size;
    return true;
  }
  std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
  std::size_t position() const noexcept { return pos_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
};

// `file` is at most kMaxOffsetsFileBytes (read_small_file checks before reading).
Result<Group> parse(std::span<const std::byte> file, const std::string& path) {
  auto corrupt = [&path](const std::string& what) { return Error{Errc::kCorrupt, path + ": " + what}; };
  if (file.size() < kHeaderBytes + kCrcBytes)
    return corrupt("truncated: " + std::to_string(file.size()) + " bytes, shorter than a header and CRC");
  if (std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) return corrupt("not an offsets file (bad magic)");

  Reader crc_reader(file.subspan(file.size() - kCrcBytes));
  std::uint32_t stored_crc = 0;
  crc_reader.get(stored_crc);
  const std::span<const std::byte> body = file.first(file.size() - kCrcBytes);
  Reader in(body);
  std::uint32_t version = 0, count = 0;
  in.skip(sizeof(kMagic));
  in.get(version);  // the size check above guarantees the header is there
  in.get(count);
  if (version != kVersion)
    return corrupt("format version " + std::to_string(version) + ", this build reads " + std::to_string(kVersion));
  if (const std::uint32_t computed = crc32c(body); computed != stored_crc)
    return corrupt("CRC-32C mismatch (stored " + std::to_string(stored_crc) + ", computed " + std::to_string(computed) + ")");

  Group group;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::string at = "entry " + std::to_string(i) + " at byte " + std::to_string(in.position());
    CommittedOffset e;
    std::uint16_t topic_bytes = 0, metadata_bytes = 0;
    std::uint64_t offset = 0, commit_time = 0;
    if (!in.get(topic_bytes) || !in.get_string(topic_bytes, e.topic) || !in.get(e.partition) || !in.get(offset) ||
        !in.get(commit_time) || !in.get(metadata_bytes) || !in.get_string(metadata_bytes, e.metadata))
      return corrupt(at + " runs past the end of the entries (" + std::to_string(count) + " declared)");
    e.offset = Offset{static_cast<std::int64_t>(offset)};
    e.commit_time_ms = static_cast<std::int64_t>(commit_time);
    if (Result<void> valid = validate_entry(e); !valid.ok()) return corrupt(at + ": " + valid.error().message);
    Partitions& partitions = group[e.topic];
    const std::uint32_t partition = e.partition;
    if (!partitions.emplace(partition, std::move(e)).second)
      return corrupt(at + ": a second entry for partition " + std::to_string(partition));
  }
  if (in.remaining() != 0)
    return corrupt(std::to_string(in.remaining()) + " bytes after the " + std::to_string(count) + " declared entries");
  return group;
}

// A full disk is kResourceExhausted (space may come back), anything else kIo.
Errc write_errc(int errno_value) { return errno_value == ENOSPC || errno_value == EDQUOT ? Errc::kResourceExhausted : Errc::kIo; }

Result<void> write_all(int fd, std::span<const std::byte> bytes, const std::string& path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return os_error(write_errc(errno), "writing " + path, errno);
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return ok();
}

Result<void> sync_dir(int fd, const std::string& dir) {
  if (fsync(fd) != 0) return os_error(Errc::kIo, "syncing directory " + dir, errno);
  return ok();
}

}  // namespace

Result<void> validate_group_id(std::string_view group) { return validate_name("group id", group, kMaxGroupIdBytes); }

struct OffsetStore::State {
  std::string dir;
  UniqueFd dir_fd;  // for syncing the directory after a rename or unlink
  std::vector<OffsetLoadProblem> problems;

  mutable std::mutex mutex;
  std::map<std::string, Group, std::less<>> groups;   // guarded by mutex
  std::set<std::string, std::less<>> unloaded;        // groups whose file failed to load; guarded by mutex

  std::string path_of(std::string_view group) const { return dir + "/" + std::string(group) + std::string(kSuffix); }

  // Writes the group's file aside, syncs it, renames it into place and syncs the directory.
  // `renamed` tells the caller whether the new file took the old one's place (even on error).
  Result<void> write_group(std::string_view group, std::span<const std::byte> bytes, bool& renamed) const {
    renamed = false;
    const std::string path = path_of(group);
    const std::string temp = path + ".tmp";
    UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) return os_error(write_errc(errno), "creating " + temp, errno);
    Result<void> written = write_all(fd.get(), bytes, temp);
    if (written.ok() && fdatasync(fd.get()) != 0) written = os_error(write_errc(errno), "syncing " + temp, errno);
    if (written.ok() && ::close(fd.release()) != 0) written = os_error(Errc::kIo, "closing " + temp, errno);
    if (written.ok() && ::rename(temp.c_str(), path.c_str()) != 0) written = os_error(Errc::kIo, "renaming " + temp, errno);
    if (!written.ok()) {
      ::unlink(temp.c_str());
      return written;
    }
    renamed = true;
    return sync_dir(dir_fd.get(), dir);
  }

  // Encodes and writes `next` as the group's new content; memory follows whatever the file holds.
  Result<void> replace_group(std::string_view group, Group next) {
    std::vector<std::byte> bytes = encode(next);
    if (bytes.size() > kMaxOffsetsFileBytes)
      return Error{Errc::kResourceExhausted, "offsets of group '" + std::string(group) + "' would take " +
                                                 std::to_string(bytes.size()) + " bytes, more than the " +
                                                 std::to_string(kMaxOffsetsFileBytes) + " a group's file may hold"};
    bool renamed = false;
    Result<void> written = write_group(group, bytes, renamed);
    if (renamed) {
      if (auto it = groups.find(group); it != groups.end()) {
        it->second = std::move(next);
      } else {
        groups.emplace(std::string(group), std::move(next));
      }
    }
    return written;
  }
};

OffsetStore::OffsetStore(std::unique_ptr<State> state) : state_(std::move(state)) {}
OffsetStore::~OffsetStore() = default;

Result<std::unique_ptr<OffsetStore>> OffsetStore::open(std::string dir) {
  auto state = std::make_unique<State>();
  if (::mkdir(dir.c_str(), 0750) == 0) {
    // The new directory's own entry must be durable too, or the first commit could vanish with it.
    std::filesystem::path created = std::filesystem::path(dir).lexically_normal();
    if (!created.has_filename()) created = created.parent_path();  // "a/b/" names "a/b"
    std::string parent = created.parent_path().string();
    if (parent.empty()) parent = ".";
    UniqueFd parent_fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!parent_fd.valid()) return os_error(Errc::kIo, "opening " + parent, errno);
    WEFT_TRY_VOID(sync_dir(parent_fd.get(), parent));
  } else if (errno != EEXIST) {
    return os_error(Errc::kIo, "creating " + dir, errno);
  }
  state->dir_fd = UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!state->dir_fd.valid()) return os_error(Errc::kIo, "opening " + dir, errno);

  DIR* listing = ::opendir(dir.c_str());
  if (listing == nullptr) return os_error(Errc::kIo, "listing " + dir, errno);
  std::vector<std::string> names;
  errno = 0;
  while (const dirent* e = ::readdir(listing)) names.emplace_back(e->d_name);
  const int listing_errno = errno;
  ::closedir(listing);
  if (listing_errno != 0) return os_error(Errc::kIo, "listing " + dir, listing_errno);
  std::sort(names.begin(), names.end());
  state->dir = std::move(dir);

  for (const std::string& name : names) {
    const std::string path = state->dir + "/" + name;
    if (name.ends_with(kTempSuffix)) {
      // A commit that did not reach its rename: the group's file still holds what was durable.
      if (::unlink(path.c_str()) == 0) {
        log(LogLevel::kInfo, "removed an unfinished offsets file", {{"file", path}});
      } else {
        log(LogLevel::kWarn, "could not remove an unfinished offsets file", {{"file", path}, {"reason", std::strerror(errno)}});
      }
      continue;
    }
    if (!name.ends_with(kSuffix)) continue;
    const std::string group = name.substr(0, name.size() - kSuffix.size());
    if (!validate_group_id(group).ok()) {
      log(LogLevel::kWarn, "ignored a file whose name is not a group id", {{"file", path}});
      continue;
    }
    Result<Group> loaded = [&path]() -> Result<Group> {
      WEFT_TRY(const std::string text, read_small_file(path, kMaxOffsetsFileBytes));
      return parse(std::as_bytes(std::span(text.data(), text.size())), path);
    }();
    if (loaded.ok()) {
      log(LogLevel::kDebug, "consumer group offsets loaded", {{"group", group}, {"topics", std::to_string(loaded->size())}});
      state->groups.emplace(group, std::move(loaded).value());
    } else {
      log(LogLevel::kError, "consumer group offsets not loaded", {{"group", group}, {"reason", loaded.error().message}});
      state->unloaded.insert(group);
      state->problems.push_back(OffsetLoadProblem{group, std::move(loaded).error()});
    }
  }
  return std::unique_ptr<OffsetStore>(new OffsetStore(std::move(state)));
}

Result<void> validate_commit(std::string_view group, std::span<const CommittedOffset> offsets) {
  WEFT_TRY_VOID(validate_group_id(group));
  for (const CommittedOffset& e : offsets) {
    if (Result<void> valid = validate_entry(e); !valid.ok())
      return Error{Errc::kInvalidArgument, "commit to group '" + std::string(group) + "': " + valid.error().message};
  }
  return ok();
}

Result<void> OffsetStore::commit(std::string_view group, std::span<const CommittedOffset> offsets) {
  WEFT_TRY_VOID(validate_commit(group, offsets));
  std::lock_guard lock(state_->mutex);
  if (state_->unloaded.contains(group))
    return Error{Errc::kFailedPrecondition, "offsets of group '" + std::string(group) + "' failed to load from " +
                                                state_->path_of(group) + "; delete_group() removes the file"};
  if (offsets.empty()) return ok();
  Group next;
  if (auto it = state_->groups.find(group); it != state_->groups.end()) next = it->second;
  for (const CommittedOffset& e : offsets) {
    auto topic = next.find(e.topic);
    if (topic == next.end()) topic = next.emplace(e.topic, Partitions{}).first;
    topic->second.insert_or_assign(e.partition, e);
  }
  return state_->replace_group(group, std::move(next));
}

std::optional<CommittedOffset> OffsetStore::fetch(std::string_view group, std::string_view topic,
                                                  std::uint32_t partition) const {
  std::lock_guard lock(state_->mutex);
  const auto g = state_->groups.find(group);
  if (g == state_->groups.end()) return std::nullopt;
  const auto t = g->second.find(topic);
  if (t == g->second.end()) return std::nullopt;
  const auto p = t->second.find(partition);
  if (p == t->second.end()) return std::nullopt;
  return p->second;
}

std::vector<CommittedOffset> OffsetStore::fetch_all(std::string_view group) const {
  std::vector<CommittedOffset> out;
  std::lock_guard lock(state_->mutex);
  const auto g = state_->groups.find(group);
  if (g == state_->groups.end()) return out;
  for (const auto& [topic, partitions] : g->second)
    for (const auto& [partition, e] : partitions) out.push_back(e);
  return out;
}

std::vector<std::string> OffsetStore::groups() const {
  std::vector<std::string> out;
  std::lock_guard lock(state_->mutex);
  out.reserve(state_->groups.size());
  for (const auto& [name, group] : state_->groups) out.push_back(name);
  return out;
}

Result<void> OffsetStore::delete_group(std::string_view group) {
  WEFT_TRY_VOID(validate_group_id(group));
  std::lock_guard lock(state_->mutex);
  const std::string path = state_->path_of(group);
  const bool unlinked = ::unlink(path.c_str()) == 0;
  if (!unlinked && errno != ENOENT) return os_error(Errc::kIo, "deleting " + path, errno);
  bool known = false;
  if (auto it = state_->groups.find(group); it != state_->groups.end()) {
    state_->groups.erase(it);
    known = true;
  }
  if (auto it = state_->unloaded.find(group); it != state_->unloaded.end()) {
    state_->unloaded.erase(it);
    known = true;
  }
  if (!unlinked) {
    // No file: the group never was, or its file was removed behind the store's back.
    if (!known) return Error{Errc::kNotFound, "no offsets for group '" + std::string(group) + "'"};
    return ok();
  }
  return sync_dir(state_->dir_fd.get(), state_->dir);
}

Result<void> OffsetStore::forget_topic(std::string_view topic) {
  WEFT_TRY_VOID(validate_name("topic name", topic, kMaxOffsetTopicBytes));
  std::lock_guard lock(state_->mutex);
  std::vector<std::string> affected;
  for (const auto& [name, group] : state_->groups)
    if (group.contains(topic)) affected.push_back(name);
  for (const std::string& name : affected) {
    Group next = state_->groups.find(name)->second;
    next.erase(next.find(topic));
    if (Result<void> replaced = state_->replace_group(name, std::move(next)); !replaced.ok())
      return Error{replaced.error().code, "forgetting topic '" + std::string(topic) + "': " + replaced.error().message};
  }
  return ok();
}

const std::vector<OffsetLoadProblem>& OffsetStore::load_problems() const noexcept { return state_->problems; }

const std::string& OffsetStore::dir() const noexcept { return state_->dir; }

}  // namespace weft
