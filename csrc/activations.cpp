// Host-side helpers of csrc/include/torchcv_ext/activations.h: the schema's activation names.
#include "torchcv_ext/activations.h"

#include <c10/util/Exception.h>

namespace torchcv_ext {

namespace {
#define TCV_ACT_NAME_(E, S, ...) S,
constexpr const char* kNames[] = {TCV_FOR_EACH_ACT(TCV_ACT_NAME_, )};
#undef TCV_ACT_NAME_
constexpr int kCount = static_cast<int>(sizeof(kNames) / sizeof(kNames[0]));

std::string all_names() {
  std::string out;
  for (int i = 0; i < kCount; ++i) out += (i ? ", " : "") + std::string(kNames[i]);
  return out;
}
}  // namespace

Act parse_act(const std::string& name) {
  for (int i = 0; i < kCount; ++i) {
    if (name == kNames[i]) return static_cast<Act>(i);
  }
  TORCH_CHECK(false, "unknown activation '", name, "'; expected one of ", all_names());
}

const char* act_name(Act a) { return kNames[static_cast<int>(a)]; }

}  // namespace torchcv_ext
