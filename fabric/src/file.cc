#include "weft/fabric/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include "weft/fabric/shared_memory.h"

namespace weft {

Result<void> replace_file(const std::string& path, std::string_view content) {
  const std::string temp = path + ".tmp";
  auto fail = [&](const char* what, int error) {
    ::unlink(temp.c_str());
    return os_error(error == ENOSPC || error == EDQUOT ? Errc::kResourceExhausted : Errc::kIo, std::string(what) + " " + temp, error);
  };
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return fail("creating", errno);
  for (std::size_t done = 0; done < content.size();) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("writing", n < 0 ? errno : EIO);
    done += static_cast<std::size_t>(n);
  }
  if (fdatasync(fd.get()) != 0) return fail("syncing", errno);
  if (::close(fd.release()) != 0) return fail("closing", errno);
  if (::rename(temp.c_str(), path.c_str()) != 0) return fail("renaming", errno);
  const std::string::size_type slash = path.rfind('/');
  return sync_directory(slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash)));
}

Result<std::string> read_small_file(const std::string& path, std::size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, and hold the
  // node's start with it.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return os_error(errno == ENOENT ? Errc::kNotFound : Errc::kIo, "opening " + path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return os_error(Errc::kIo, "examining " + path, errno);
  if (!S_ISREG(st.st_mode)) return Error{Errc::kCorrupt, path + " is not a regular file"};
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    return Error{Errc::kCorrupt, path + " holds " + std::to_string(st.st_size) + " bytes, more than the " +
                                     std::to_string(max_bytes) + " such a file may hold"};
  // One byte more than fstat said, so a file that grew since is read on, up to the limit.
  std::string text(static_cast<std::size_t>(st.st_size) + 1, '\0');
  std::size_t got = 0;
  while (true) {
    if (got == text.size()) {
      if (got > max_bytes) break;
      text.resize(std::min(text.size() * 2, max_bytes + 1));
    }
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return os_error(Errc::kIo, "reading " + path, errno);
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > max_bytes) return Error{Errc::kCorrupt, path + " holds more than the " + std::to_string(max_bytes) + " bytes such a file may hold"};
  text.resize(got);
  return text;
}

Result<void> sync_directory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return os_error(Errc::kIo, "opening directory " + dir, errno);
  if (::fsync(fd.get()) != 0) return os_error(Errc::kIo, "syncing directory " + dir, errno);
  return ok();
}

}  // namespace weft
