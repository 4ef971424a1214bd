#pragma once
// The bench's report as data: one table of row columns (name, unit, how to read
// it from a BenchRow) drives the terminal table, the CSV and the JSON, so a new
// quantity is one line here and appears in every output with the same value.
#include <iosfwd>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/bench.h"

namespace chargpt {

// Where a column appears. The CSV and the JSON differ only in units for a few
// quantities (MiB vs bytes, GFLOP/s vs FLOP/s, % vs fraction): each unit is its own column.
enum BenchOutput : unsigned { kCsv = 1, kJson = 2 };

struct BenchColumn {
  enum Kind { integer, boolean, real };
  const char* name;    // CSV header and JSON key; the unit is part of the name (_ms, _mib, _pct, ...)
  Kind kind;
  const char* format;  // printf format of a real value in the CSV
  unsigned outputs;    // kCsv | kJson
  double (*get)(const BenchRow&);
};

// Every per-row quantity, in CSV order.
std::span<const BenchColumn> bench_columns();
// The column of that name; throws std::logic_error if there is none.
const BenchColumn& bench_column(const std::string& name);

// The CSV header line (no newline): the names of the kCsv columns.
std::string bench_csv_header();

// The human-readable report: header, one line per thread count, notes, the Amdahl fit.
void print_bench_table(const BenchResult& r, std::ostream& out);
// One CSV line per thread count, after the header.
void write_bench_csv(const BenchResult& r, std::ostream& out);
// The whole result: config, method, rows (the kJson columns plus the per-round series), the Amdahl fit.
nlohmann::json bench_json(const BenchResult& r);

}  // namespace chargpt
