# README.md must show examples/minimal.c as it is (-DREADME=... -DEXAMPLE=...).
file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)
string(FIND "${readme}" "```c\n${example}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not show ${EXAMPLE} verbatim in a ```c block: update it")
endif()
