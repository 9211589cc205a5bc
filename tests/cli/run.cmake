# Run the attn command (-DATTN=path) with various arguments and check the
# exit code and output of each: 0 ok, 1 bad usage, 2 bad input.
cmake_minimum_required(VERSION 3.21)
set(failures 0)

# expect(CODE REGEX args...): stdout+stderr must match REGEX.
function(expect code regex)
  execute_process(COMMAND "${ATTN}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE out)
  if(NOT rc STREQUAL "${code}" OR NOT out MATCHES "${regex}")
    message(SEND_ERROR "attn ${ARGN}: exit ${rc} (expected ${code}), output should match "
                       "'${regex}':\n${out}")
  else()
    message(STATUS "attn ${ARGN}: exit ${rc} as expected")
  endif()
endfunction()

expect(0 "usage: attn SUBCOMMAND.*attn demo.*attn softmax.*Exit status" --help)
expect(0 "usage: attn SUBCOMMAND" -h)
expect(0 "usage: attn SUBCOMMAND" help)
expect(1 "usage: attn SUBCOMMAND")
expect(1 "unknown subcommand 'frobnicate'" frobnicate)
expect(0 "^attn [0-9]+\\.[0-9]+\\.[0-9]+ \\(libattn " --version)

expect(0 "^libattn +[0-9.]+ \\(header [0-9.]+\\)\nblas +[^\n]+\ncpu +[^\n]+\nthreads +[1-9]" info)
expect(0 "usage: attn info" info --help)
expect(0 "usage: attn info" help info)
expect(1 "unexpected argument '--frobnicate'" info --frobnicate)

expect(0 "usage: attn demo" demo --help)
expect(1 "unexpected argument 'x'" demo x)
expect(1 "unknown subcommand 'nope'" help nope)
# The demo's softmax of [1, 2, 3, 4, 5] is the article's example; its weights
# sum to 1 and the causal grid masks the upper triangle.
expect(0 "softmax\\(x\\) +0\\.01166 0\\.03168 0\\.08613 0\\.23412 0\\.63641 +sum 1\\.000000" demo)
expect(0 "attention weights.*\n  the +1\\.000 +- +- +- +- +-\n" demo)
expect(0 "output rows" demo)
expect(0 "^usage: attn softmax" help softmax)
