#include "weft/fabric/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

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
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid() || fsync(dir_fd.get()) != 0) return os_error(Errc::kIo, "syncing directory " + dir, errno);
  return ok();
}

}  // namespace weft
