// src/ops/ops.cpp at 16 floats per vector, for the tests: see ops_widths.h.
#define CHARGPT_OPS_WIDTH 16
#define CHARGPT_OPS_NS chargpt_ops_w16
#define CHARGPT_OPS_GETTER ops_width16
#include "ops_width.inc"
