# Shared build helpers: warnings, tests, benches, header self-containment.

add_library(weft_warnings INTERFACE)
add_library(weft::warnings ALIAS weft_warnings)
target_compile_options(weft_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wnon-virtual-dtor
  -Wold-style-cast -Wimplicit-fallthrough
  $<$<BOOL:${WEFT_WERROR}>:-Werror>)

# The core tests (labels unit and stress): what the sanitizer presets build and run, so that CI
# spends its sanitizer time on them rather than on the daemons and multi-process suites.
add_custom_target(weft_core_tests)

# One precompiled header for every test binary: GoogleTest and the standard headers the tests
# share take 5-6 s to parse in each of ~45 test files, whatever the optimisation level (a third
# of a file's compile in the sanitizer presets). Third-party and standard headers only, so a
# change to weft's own headers rebuilds nothing more than it did.
function(weft_add_test_pch)
  set(src "${CMAKE_CURRENT_BINARY_DIR}/weft_test_pch.cc")
  file(CONFIGURE OUTPUT "${src}" CONTENT "// The precompiled header's own translation unit.\n")
  add_library(weft_test_pch OBJECT "${src}")
  target_link_libraries(weft_test_pch PRIVATE GTest::gtest weft::warnings Threads::Threads)
  target_precompile_headers(weft_test_pch PRIVATE
    <gtest/gtest.h> <algorithm> <atomic> <chrono> <cstdint> <cstdio> <cstring> <filesystem>
    <fstream> <functional> <map> <memory> <optional> <random> <set> <span> <string> <thread>
    <vector>)
  weft_test_compiler_launcher(weft_test_pch)
endfunction()

# ccache caches a file compiled with a precompiled header only when told that the header's
# macros and time stamps may be trusted (its manual, "Precompiled headers").
function(weft_test_compiler_launcher target)
  if(CCACHE_PROGRAM AND CMAKE_CXX_COMPILER_LAUNCHER STREQUAL CCACHE_PROGRAM)  # not over a launcher of the user's
    set_target_properties(${target} PROPERTIES CXX_COMPILER_LAUNCHER
      "${CMAKE_COMMAND};-E;env;CCACHE_SLOPPINESS=pch_defines,time_macros;${CCACHE_PROGRAM}")
  endif()
endfunction()

# GCC 12 reports its middle-end warnings (-Warray-bounds, -Wstringop-overflow and kin) inside
# std::string's inlined copies when those come from a precompiled header, where it stays silent
# as the same headers are parsed (cli_test.cc compiled clean, and failed with the header
# precompiled). Tests only: the library keeps every warning.
function(weft_use_test_pch target)
  if(TARGET weft_test_pch)
    target_precompile_headers(${target} REUSE_FROM weft_test_pch)
    weft_test_compiler_launcher(${target})
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -Wno-array-bounds -Wno-stringop-overflow -Wno-stringop-overread -Wno-restrict)
    endif()
  endif()
endfunction()

# weft_add_test(NAME SOURCES ... LIBS ... LABELS ... [TIMEOUT s] [ARGS ...])
# One test binary per file; GoogleTest; one ctest entry per binary (more with weft_add_test_run).
function(weft_add_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main weft::warnings Threads::Threads)
  weft_use_test_pch(${name})
  weft_add_test_run(${name} BINARY ${name} LABELS ${T_LABELS} TIMEOUT "${T_TIMEOUT}" ARGS ${T_ARGS})
endfunction()

# weft_add_test_run(NAME BINARY target LABELS ... [TIMEOUT s] [ARGS ...]): a ctest entry that runs
# a test binary, with its arguments (a --gtest_filter, to give part of a binary other labels).
function(weft_add_test_run name)
  cmake_parse_arguments(T "" "BINARY;TIMEOUT" "LABELS;ARGS" ${ARGN})
  add_test(NAME ${name} COMMAND ${T_BINARY} --gtest_brief=1 ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77)
  if("unit" IN_LIST T_LABELS OR "stress" IN_LIST T_LABELS)
    add_dependencies(weft_core_tests ${T_BINARY})
  endif()
endfunction()

# weft_add_bench(NAME SOURCES ... LIBS ...): a Google Benchmark binary.
function(weft_add_bench name)
  cmake_parse_arguments(B "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${B_SOURCES})
  target_link_libraries(${name} PRIVATE ${B_LIBS} benchmark::benchmark weft::warnings Threads::Threads)
endfunction()

# weft_check_headers(TARGET DIR): every public header compiles alone.
function(weft_check_headers target dir)
  file(GLOB_RECURSE headers RELATIVE "${dir}" "${dir}/*.h")
  set(sources "")
  foreach(h IN LISTS headers)
    string(MAKE_C_IDENTIFIER "${h}" id)
    set(src "${CMAKE_CURRENT_BINARY_DIR}/check_headers/${id}.cc")
    file(CONFIGURE OUTPUT "${src}" CONTENT "#include <${h}>\n")
    list(APPEND sources "${src}")
  endforeach()
  add_library(${target}_check_headers OBJECT ${sources})
  target_link_libraries(${target}_check_headers PRIVATE ${target} weft::warnings)
endfunction()
