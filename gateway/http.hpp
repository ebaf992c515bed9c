// The HTTP message types the gateway uses.
#pragma once

#include "net.hpp"

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

namespace ppgate {

namespace http = beast::http;
using http_request = http::request<http::string_body>;
using http_response = http::response<http::string_body>;

// A response with a JSON (or other) body and the headers every ppgate response carries.
http_response make_response(http::status status, std::string body, unsigned version,
                            std::string_view content_type = "application/json");
http_response make_error(http::status status, std::string_view message, unsigned version);

}  // namespace ppgate
