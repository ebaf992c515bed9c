// Renderings of scheduler statistics: JSON for /v1/stats and pp's print_stats() table.
#pragma once

#include "scheduler.hpp"

#include <string>

namespace ppgate {

// pp's print_stats() output, byte for byte (ppft 1.7 layout).
std::string format_stats_table(const scheduler_stats& s, std::size_t ncpus);

std::string format_stats_json(const scheduler_stats& s, std::size_t ncpus);

}  // namespace ppgate
