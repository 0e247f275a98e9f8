"""Stand-in of modules/call_queue.py: the lock that keeps one job at a time."""

import threading

queue_lock = threading.Lock()
