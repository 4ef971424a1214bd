# Included by CTest after the discovered doctest cases (CMakeLists.txt, robustness block):
# a case that cannot run here prints "SKIPPED: why" and is reported as skipped, not passed.
set_tests_properties("saves: a full disk fails the save with a message and leaves the previous pair resumable"
                     PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED:")
