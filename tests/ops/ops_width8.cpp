// src/ops/ops.cpp at 8 floats per vector, for the tests: see ops_widths.h.
#define CHARGPT_OPS_WIDTH 8
#define CHARGPT_OPS_NS chargpt_ops_w8
#define CHARGPT_OPS_GETTER ops_width8
#include "ops_width.inc"
