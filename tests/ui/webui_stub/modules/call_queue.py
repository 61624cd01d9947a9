"""Stand-in for modules/call_queue.py (the real lock is a FIFOLock)."""

import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            res = func(*args, **kwargs)

        return res

    return f
