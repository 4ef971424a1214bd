#pragma once
// The one clock chargpt times with: monotonic, so that a change of the wall
// clock never makes a step look negative or huge.
#include <chrono>

namespace chargpt {

using Clock = std::chrono::steady_clock;

// Seconds from t0 to now.
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace chargpt
