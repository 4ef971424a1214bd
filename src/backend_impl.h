#pragma once
// Factories of the backends (each in its own file, compiled in by a CMake option).
#include <memory>

#include "chargpt/backend.h"

namespace chargpt {

std::unique_ptr<Backend> make_openblas_backend(const BackendOptions& opt);  // backend_openblas.cpp
std::string openblas_info();                                                // backend_openblas.cpp

}  // namespace chargpt
