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

# weft_add_test(NAME SOURCES ... LIBS ... LABELS ... [TIMEOUT s])
# One test binary per file; GoogleTest; one ctest entry per binary.
function(weft_add_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main weft::warnings Threads::Threads)
  add_test(NAME ${name} COMMAND ${name} --gtest_brief=1)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77)
  if("unit" IN_LIST T_LABELS OR "stress" IN_LIST T_LABELS)
    add_dependencies(weft_core_tests ${name})
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
