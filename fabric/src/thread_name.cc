#include "weft/fabric/thread_name.h"

#include <pthread.h>

#include <cstring>

namespace weft {

void name_this_thread(const char* name) noexcept {
  char cut[16] = {};
  std::strncpy(cut, name, sizeof cut - 1);
  (void)pthread_setname_np(pthread_self(), cut);  // a name is a courtesy: failing to set one is fine
}

}  // namespace weft
