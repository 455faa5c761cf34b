// The one Catch2 include of the tests: Catch2 v3 (split headers) or Debian's v2 (single header).
#pragma once

#if KIN_CATCH2_MAJOR >= 3
#include <catch2/catch_session.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
