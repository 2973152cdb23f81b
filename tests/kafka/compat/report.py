"""How the compatibility scripts report: timed progress lines, and a FAIL line with exit 1."""
import sys
import time

STARTED = time.monotonic()


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def step(message):
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)
