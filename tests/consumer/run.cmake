# Consumer test, run by ctest as `cmake -P`: install the build into a
# temporary prefix, move that prefix (the package must be relocatable), then
# build and run tests/consumer/consumer.c twice against it: with the flags of
# `pkg-config --cflags --libs attn`, and as a CMake project using
# find_package(attn CONFIG REQUIRED) and attn::attn. The installed programs
# (attn, attn-bench) must run from the moved prefix with no environment.
#
# Inputs (-D): BUILD_DIR, SOURCE_DIR (this directory), WORK_DIR, CONFIG,
# C_COMPILER, PKG_CONFIG, LIBDIR (CMAKE_INSTALL_LIBDIR), BINDIR
# (CMAKE_INSTALL_BINDIR), PROGRAMS (the installed programs to run; may be
# empty), SANITIZE (may be empty).
cmake_minimum_required(VERSION 3.21)

foreach(var BUILD_DIR SOURCE_DIR WORK_DIR C_COMPILER PKG_CONFIG LIBDIR BINDIR)
  if(NOT ${var})
    message(FATAL_ERROR "consumer test: -D${var}=... is required")
  endif()
endforeach()

# Run a command; stop the test with its output when it fails.
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${ARGN}\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

set(extra_flags)
if(SANITIZE)
  # A sanitized libattn needs the sanitizer runtime in the program too.
  set(extra_flags -fsanitize=${SANITIZE})
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
set(stage "${WORK_DIR}/stage")
set(prefix "${WORK_DIR}/moved prefix") # a space, to catch unquoted paths
run("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${stage}"
    --config "${CONFIG}")
file(RENAME "${stage}" "${prefix}")
foreach(f include/attn.h ${LIBDIR}/pkgconfig/attn.pc ${LIBDIR}/cmake/attn/attnConfig.cmake
          ${LIBDIR}/cmake/attn/attnConfigVersion.cmake ${LIBDIR}/cmake/attn/attnTargets.cmake)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "cmake --install did not install ${f}")
  endif()
endforeach()

# 0. The version policy of the installed attnConfigVersion.cmake: every 0.x
# minor stays compatible with the earlier ones. Evaluated as find_package
# does (the PACKAGE_FIND_* variables, then include), for this version and
# for the same file claiming 0.2.0.
function(version_check file want expect)
  set(PACKAGE_FIND_VERSION "${want}")
  string(REGEX MATCH "^[0-9]+" PACKAGE_FIND_VERSION_MAJOR "${want}")
  set(CMAKE_SIZEOF_VOID_P "")
  include("${file}")
  if(NOT "${PACKAGE_VERSION_COMPATIBLE}" STREQUAL "${expect}")
    message(FATAL_ERROR "attnConfigVersion.cmake of ${PACKAGE_VERSION}: a request for "
                        "${want} gave COMPATIBLE=${PACKAGE_VERSION_COMPATIBLE}, expected ${expect}")
  endif()
endfunction()
set(version_file "${prefix}/${LIBDIR}/cmake/attn/attnConfigVersion.cmake")
file(READ "${version_file}" version_text)
string(REGEX MATCH "set\\(PACKAGE_VERSION \"([0-9.]+)\"\\)" _ "${version_text}")
set(this_version "${CMAKE_MATCH_1}")
string(REGEX MATCH "^[0-9]+" this_major "${this_version}")
version_check("${version_file}" "${this_version}" TRUE)
version_check("${version_file}" "${this_major}.0" TRUE)
math(EXPR next_major "${this_major} + 1")
version_check("${version_file}" "${next_major}.0" FALSE)
string(REGEX REPLACE "set\\(PACKAGE_VERSION \"[0-9.]+\"\\)" "set(PACKAGE_VERSION \"0.2.0\")"
       fake_text "${version_text}")
file(WRITE "${WORK_DIR}/fake-0.2.0-version.cmake" "${fake_text}")
foreach(case "0.1;TRUE" "0.1.7;TRUE" "0.2;TRUE" "0.2.0;TRUE" "0.2.1;FALSE" "0.3;FALSE"
        "1.0;FALSE")
  list(GET case 0 want)
  list(GET case 1 expect)
  version_check("${WORK_DIR}/fake-0.2.0-version.cmake" "${want}" ${expect})
endforeach()
message(STATUS "attnConfigVersion.cmake: ${this_version}; as 0.2.0 it accepts 0.1 and 0.2, "
               "refuses 0.2.1, 0.3 and 1.0")

# 1. pkg-config, as a Makefile would use it. For a shared libattn only its
# own attn.pc may be needed (no OpenBLAS development files): the search path
# is the prefix alone.
set(ENV{PKG_CONFIG_PATH} "${prefix}/${LIBDIR}/pkgconfig")
if(EXISTS "${prefix}/${LIBDIR}/libattn.so")
  set(ENV{PKG_CONFIG_LIBDIR} "${prefix}/${LIBDIR}/pkgconfig")
  run("pkg-config with no other .pc files" "${PKG_CONFIG}" --cflags --libs attn)
  unset(ENV{PKG_CONFIG_LIBDIR})
endif()
run("pkg-config" "${PKG_CONFIG}" --cflags --libs attn)
string(STRIP "${run_output}" pc_flags)
message(STATUS "pkg-config --cflags --libs attn: ${pc_flags}")
run("pkg-config --variable=libdir" "${PKG_CONFIG}" --variable=libdir attn)
string(STRIP "${run_output}" pc_libdir)
string(REPLACE "\\ " " " pc_libdir "${pc_libdir}") # pkg-config escapes spaces
file(REAL_PATH "${pc_libdir}" pc_libdir)
file(REAL_PATH "${prefix}/${LIBDIR}" want_libdir)
if(NOT pc_libdir STREQUAL want_libdir)
  message(FATAL_ERROR "attn.pc is not relocatable: libdir ${pc_libdir}, expected ${want_libdir}")
endif()
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
run("compile with pkg-config flags" "${C_COMPILER}" -std=c11 ${extra_flags}
    "${SOURCE_DIR}/consumer.c" -o "${WORK_DIR}/pc-consumer" ${pc_flags} -lm)
set(ENV{LD_LIBRARY_PATH} "${prefix}/${LIBDIR}")
run("the pkg-config consumer" "${WORK_DIR}/pc-consumer")
message(STATUS "pkg-config consumer: ${run_output}")
unset(ENV{LD_LIBRARY_PATH})

# 2. find_package(attn CONFIG), as a CMake project would use it. The package
# registry is off so only the temporary prefix can satisfy it.
run("configure the find_package consumer" "${CMAKE_COMMAND}"
    -S "${SOURCE_DIR}/project" -B "${WORK_DIR}/cmake-build"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DEXPECTED_PREFIX=${prefix}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_BUILD_TYPE=${CONFIG}"
    "-DCMAKE_C_FLAGS=${extra_flags}" "-DCMAKE_EXE_LINKER_FLAGS=${extra_flags}")
run("build the find_package consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/cmake-build")
run("the find_package consumer" "${WORK_DIR}/cmake-build/consumer")
message(STATUS "find_package consumer: ${run_output}")

# 3. The installed programs, found and run as a user of the prefix would.
unset(ENV{LD_LIBRARY_PATH})
foreach(program IN LISTS PROGRAMS)
  if(NOT program)
    continue()
  endif()
  set(exe "${prefix}/${BINDIR}/${program}")
  if(NOT EXISTS "${exe}")
    message(FATAL_ERROR "cmake --install did not install ${BINDIR}/${program}")
  endif()
  if(program STREQUAL "attn")
    run("the installed attn" "${exe}" info)
    if(NOT run_output MATCHES "libattn")
      message(FATAL_ERROR "attn info printed: ${run_output}")
    endif()
  else()
    run("the installed attn-bench" "${exe}" --smoke)
  endif()
  message(STATUS "installed ${program} runs from the moved prefix")
endforeach()

file(REMOVE_RECURSE "${WORK_DIR}")
