"""Built-in op `noop`: reads its params and succeeds. For tests and benchmarks."""

import sys

sys.stdin.buffer.read()
