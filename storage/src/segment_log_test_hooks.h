// Seams for tests of the segment log, not part of the library's interface.
#pragma once

#include <string>

namespace weft::storage::test_hooks {

// Called in the process's syncer thread before it syncs a closed segment of the log in `dir`:
// 0 lets the sync go on, an errno fails it as the disk would have. For tests that must hold a
// background sync at that moment, or fail it, whatever the machine's timing; none unless set.
using ClosedSegmentSyncHook = int (*)(const std::string& dir);
void set_closed_segment_sync_hook(ClosedSegmentSyncHook hook) noexcept;

}  // namespace weft::storage::test_hooks
