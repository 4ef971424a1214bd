// src/ops/ops.cpp at 4 floats per vector, for the tests: see ops_widths.h.
#define CHARGPT_OPS_WIDTH 4
#define CHARGPT_OPS_NS chargpt_ops_w4
#define CHARGPT_OPS_GETTER ops_width4
#include "ops_width.inc"
