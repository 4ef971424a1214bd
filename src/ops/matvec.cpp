// Matrix-vector rows (the KV-cache step): lane_dot.h, four rows at a time, so a
// row's value never depends on how rows are split.
#include <cstddef>

#include "ops/lane_dot.h"
#include "ops/ops.h"

namespace chargpt {

void matvec_rows(float* out, const float* W, const float* b, const float* x, int IC, int o0, int o1) {
  int o = o0;
  float r[4];
  for (; o + 4 <= o1; o += 4) {
    lane_dot_rows<4>(r, W + (size_t)o * IC, IC, x, IC);
    for (int j = 0; j < 4; ++j) out[o + j] = b ? r[j] + b[o + j] : r[j];
  }
  for (; o < o1; ++o) {
    lane_dot_rows<4>(r, W + (size_t)o * IC, 0, x, IC);  // rows 1..3 alias row 0: same arithmetic as above
    out[o] = b ? r[0] + b[o] : r[0];
  }
}

}  // namespace chargpt
