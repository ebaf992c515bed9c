// The JSON of a job as the REST API shows it (docs/rest.md, "The job object").
#pragma once

#include "job.hpp"
#include "json_writer.hpp"

#include <string>

namespace ppgate {

void write_job_json(json_writer& w, const job& j);
// The same without the result, error and output (GET /v1/jobs lists jobs so).
void write_job_summary_json(json_writer& w, const job& j);
std::string format_job_json(const job& j);

}  // namespace ppgate
