#include "chargpt/cli.h"
namespace chargpt {
int cmd_sample(int, char**) { throw UsageError("not implemented yet"); }
}  // namespace chargpt
