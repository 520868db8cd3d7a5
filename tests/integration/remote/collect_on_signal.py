"""Put into the test host's virtualenv by test_stall_kombu53 (imported from a .pth file).

In a Celery worker only: the automatic garbage collector is turned off, and SIGUSR2 runs it.
kombu 5.3 stalls the worker when the collector frees a failed channel's redis-py connections
after the new connection is registered with the event loop (kombu#2007); when that happens
is otherwise up to the worker's allocations. With this, the test runs the collector at that
moment, and the stall itself is still kombu's own code removing its poll-start hook.
"""

import sys

if sys.argv[0].endswith("/celery") and "worker" in sys.argv[1:]:
    import gc
    import signal

    gc.disable()
    signal.signal(signal.SIGUSR2, lambda signum, frame: gc.collect())
