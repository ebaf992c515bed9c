// The JSON of a job as the REST API and sessions show it (docs/rest.md, "The job object").
#pragma once

#include "job.hpp"

#include <string>

namespace ppgate {

std::string format_job_json(const job& j);

}  // namespace ppgate
