#include "weft/fabric/result.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace weft {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::kOk: return "ok";
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kUnavailable: return "unavailable";
    case Errc::kAborted: return "aborted";
    case Errc::kFailedPrecondition: return "failed precondition";
    case Errc::kNotFound: return "not found";
    case Errc::kAlreadyExists: return "already exists";
    case Errc::kResourceExhausted: return "resource exhausted";
    case Errc::kOutOfRange: return "out of range";
    case Errc::kCorrupt: return "corrupt";
    case Errc::kDataLoss: return "data loss";
    case Errc::kUnsupported: return "unsupported";
    case Errc::kIo: return "io error";
    case Errc::kInternal: return "internal error";
    case Errc::kPermissionDenied: return "permission denied";
    default: return "unknown error";
  }
}

Error os_error(Errc code, std::string what, int errno_value) {
  what += ": ";
  what += std::strerror(errno_value);
  return Error{code, std::move(what)};
}

void check_failed(const char* file, int line, const char* condition, const char* message) {
  std::fprintf(stderr, "weft: check failed at %s:%d: %s (%s)\n", file, line, condition, message);
  std::abort();
}

}  // namespace weft
