// Host-side helpers of csrc/include/torchcv_ext/activations.h.
#include "torchcv_ext/activations.h"

#include <c10/util/Exception.h>

namespace torchcv_ext {

namespace {
constexpr const char* kNames[] = {"identity", "relu", "relu6", "hardswish",
                                  "silu", "hardsigmoid", "sigmoid"};
}

Act parse_act(const std::string& name) {
  for (int i = 0; i < static_cast<int>(sizeof(kNames) / sizeof(kNames[0])); ++i) {
    if (name == kNames[i]) return static_cast<Act>(i);
  }
  TORCH_CHECK(false, "unknown activation '", name,
              "'; expected one of identity, relu, relu6, hardswish, silu, hardsigmoid, sigmoid");
}

const char* act_name(Act a) { return kNames[static_cast<int>(a)]; }

}  // namespace torchcv_ext
