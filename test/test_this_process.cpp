#include "catch.hpp"
TEST_CASE("placeholder", "[this_process]") { CHECK(true); }
