# A guard for the CTest registration itself: fails when any CTest entry that runs
# the doctest binary selects anything but exactly one doctest case, or when some
# doctest case has no entry of its own.
#
# Why: doctest_discover_tests turns each case name into a CTest entry. A name with
# a character that CMake or doctest's filter treats specially (';' splits a CMake
# list, ',' separates doctest filters, '*' '?' are wildcards) gives entries that
# run zero cases and still pass. Each entry's own command is replayed here with
# --list-test-cases appended, which lists what its filters select without running it.
#
#   cmake -DBUILD_DIR=<build dir> -DTEST_BINARY=<path of chargpt_tests> -DSELF=<this entry's name>
#         -P tests/check_ctest_entries.cmake
cmake_minimum_required(VERSION 3.20)
foreach(v BUILD_DIR TEST_BINARY SELF)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "check_ctest_entries: -D${v}=... is required")
  endif()
endforeach()

# The names --list-test-cases prints for ARGN (a command line), into OUT_VAR.
function(listed_cases out_var)
  execute_process(COMMAND ${ARGN} --list-test-cases
    OUTPUT_VARIABLE output ERROR_VARIABLE error RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "check_ctest_entries: '${ARGN} --list-test-cases' failed (${rc}):\n${output}${error}")
  endif()
  # Keep ';' in names intact while splitting into lines.
  string(REPLACE ";" "<semicolon>" output "${output}")
  string(REPLACE "\n" ";" lines "${output}")
  set(names "")
  foreach(line IN LISTS lines)
    if(line STREQUAL "" OR line MATCHES "^====" OR line MATCHES "^\\[doctest\\] ")
      continue()
    endif()
    list(APPEND names "${line}")
  endforeach()
  set(${out_var} "${names}" PARENT_SCOPE)
endfunction()

execute_process(COMMAND "${CMAKE_CTEST_COMMAND}" --test-dir "${BUILD_DIR}" --show-only=json-v1
  OUTPUT_VARIABLE json ERROR_VARIABLE error RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check_ctest_entries: ctest --show-only failed (${rc}): ${error}")
endif()

get_filename_component(binary "${TEST_BINARY}" REALPATH)
string(JSON n_tests LENGTH "${json}" tests)
set(covered "")
set(checked 0)
set(failures "")
math(EXPR last "${n_tests} - 1")
foreach(i RANGE ${last})
  string(JSON name GET "${json}" tests ${i} name)
  if(name STREQUAL SELF)
    continue()
  endif()
  string(JSON n_args ERROR_VARIABLE no_command LENGTH "${json}" tests ${i} command)
  if(no_command)
    string(APPEND failures "  '${name}': no command\n")
    continue()
  endif()
  set(command "")
  math(EXPR last_arg "${n_args} - 1")
  foreach(j RANGE ${last_arg})
    string(JSON arg GET "${json}" tests ${i} command ${j})
    list(APPEND command "${arg}")
  endforeach()
  list(GET command 0 program)
  get_filename_component(program "${program}" REALPATH)
  if(NOT program STREQUAL binary)
    message(STATUS "not a doctest entry, not checked: '${name}'")
    continue()
  endif()
  math(EXPR checked "${checked} + 1")
  listed_cases(cases ${command})
  list(LENGTH cases n)
  if(NOT n EQUAL 1)
    string(APPEND failures "  '${name}' selects ${n} doctest cases, not 1: [${cases}]\n")
    continue()
  endif()
  if(cases IN_LIST covered)
    string(APPEND failures "  '${name}' selects '${cases}', which another entry already runs\n")
  endif()
  list(APPEND covered "${cases}")
endforeach()

listed_cases(all "${TEST_BINARY}")
foreach(c IN LISTS all)
  if(NOT c IN_LIST covered)
    string(APPEND failures "  doctest case '${c}' has no CTest entry that runs it alone\n")
  endif()
endforeach()

list(LENGTH all n_all)
if(failures)
  string(REPLACE "<semicolon>" ";" failures "${failures}")
  message(FATAL_ERROR "check_ctest_entries: ${checked} doctest entries, ${n_all} doctest cases:\n${failures}"
    "Rename the case: avoid ';' ',' '*' '?' '[' ']' and '\\' in doctest case names.")
endif()
if(n_all EQUAL 0)
  message(FATAL_ERROR "check_ctest_entries: the test binary lists no doctest cases")
endif()
message(STATUS "check_ctest_entries: ${checked} CTest entries, each runs exactly one of the ${n_all} doctest cases")
