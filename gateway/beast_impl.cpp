// Compiles Beast's implementation once (BOOST_BEAST_SEPARATE_COMPILATION is set for gateway/).
#include <boost/beast/src.hpp>
