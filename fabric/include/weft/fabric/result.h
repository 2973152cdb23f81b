// Result<T>: a value or an Error, for control-plane, IO and parsing code.
// Hot paths do not use it: they return small status enums and never allocate.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace weft {

// What the caller should do about an error (retry semantics follow absl's status guide).
enum class Errc : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // the request itself is wrong; do not retry as is
  kUnavailable,         // retry the same call later
  kAborted,             // retry at a higher level (re-read state, then retry)
  kFailedPrecondition,  // do not retry until the system state is fixed
  kNotFound,
  kAlreadyExists,
  kResourceExhausted,   // out of memory, hugepages, slots, disk
  kOutOfRange,
  kCorrupt,             // bytes from a file or peer fail validation
  kDataLoss,
  kUnsupported,
  kIo,                  // the operating system refused an IO call
  kInternal,            // our bug
  kPermissionDenied,    // the caller is not allowed; retrying will not help
};

std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code = Errc::kInternal;
  std::string message;
};

// Builds an Error whose message ends with the text of `errno_value`.
Error os_error(Errc code, std::string what, int errno_value);

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : storage_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return storage_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(storage_); }
  const T& value() const& { return std::get<0>(storage_); }
  T&& value() && { return std::get<0>(std::move(storage_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& { return std::get<1>(storage_); }
  Error&& error() && { return std::get<1>(std::move(storage_)); }

 private:
  std::variant<T, Error> storage_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{Errc::kOk, {}};
  bool ok_ = true;
};

inline Result<void> ok() { return {}; }

[[noreturn]] void check_failed(const char* file, int line, const char* condition, const char* message);

}  // namespace weft

#define WEFT_CONCAT_INNER(a, b) a##b
#define WEFT_CONCAT(a, b) WEFT_CONCAT_INNER(a, b)

// WEFT_TRY(auto x, expr): evaluates a Result; returns its error, else binds the value.
#define WEFT_TRY(decl, expr) WEFT_TRY_IMPL(WEFT_CONCAT(weft_try_, __LINE__), decl, expr)
#define WEFT_TRY_IMPL(tmp, decl, expr)          \
  auto tmp = (expr);                            \
  if (!tmp.ok()) return std::move(tmp).error(); \
  decl = std::move(tmp).value()

// WEFT_TRY_VOID(expr): evaluates a Result<void> and returns its error.
#define WEFT_TRY_VOID(expr)                                     \
  do {                                                          \
    auto weft_try_void_ = (expr);                               \
    if (!weft_try_void_.ok()) return std::move(weft_try_void_).error(); \
  } while (0)

// Our own invariants (never input from a client or a file): abort with file:line.
#define WEFT_CHECK(cond, message)                                      \
  do {                                                                 \
    if (!(cond)) [[unlikely]]                                          \
      ::weft::check_failed(__FILE__, __LINE__, #cond, (message));      \
  } while (0)
