#include "chargpt/cli.h"
namespace chargpt {
int cmd_bench(int, char**) { throw UsageError("not implemented yet"); }
}  // namespace chargpt
