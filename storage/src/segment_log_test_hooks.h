// Seams for tests of the segment log, not part of the library's interface.
#pragma once

#include <span>
#include <string>

namespace weft::storage::test_hooks {

// Called in the process's syncer thread before it syncs `files` (descriptors) for a roll of the
// log in `dir`: 0 lets the sync go on, an errno fails it as the disk would have. For tests that
// must hold a background sync at that moment, fail it, or see what it covers, whatever the
// machine's timing; none unless set.
using ClosedSegmentSyncHook = int (*)(const std::string& dir, std::span<const int> files);
void set_closed_segment_sync_hook(ClosedSegmentSyncHook hook) noexcept;

}  // namespace weft::storage::test_hooks
