# GoogleTest comes from the system (Debian: apt-get install libgtest-dev); nothing is vendored.
find_package(GTest CONFIG QUIET)
if(NOT GTest_FOUND)
  find_package(GTest MODULE)
endif()
if(NOT TARGET GTest::gtest OR NOT TARGET GTest::gtest_main)
  message(FATAL_ERROR "GoogleTest not found: install it (Debian/Ubuntu: apt-get install libgtest-dev) "
                      "or pass -DPAGEDCORE_BUILD_TESTS=OFF")
endif()
