// Compiles Asio's implementation once for the whole project
// (BOOST_ASIO_SEPARATE_COMPILATION is defined for every target).
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
