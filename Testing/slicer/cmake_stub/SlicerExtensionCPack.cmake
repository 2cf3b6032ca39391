file(APPEND ${CMAKE_BINARY_DIR}/manifest.txt "cpack|included||\n")
