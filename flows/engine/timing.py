"""How often and how long: the engine's intervals, graces and batch sizes.

Read as ``timing.NAME`` where used, so a test can shorten one for the whole engine with
``monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)``.
"""

# How long past its own timeout a task may keep its thread before it is abandoned: a task
# that blocks the event loop (time.sleep, CPU loop) cannot be cancelled, only left behind.
ABANDON_GRACE_SECONDS = 2.0
# A run of the task loop that ends this much later than it should have was held up by a
# task's blocking code (tasks run on the dispatcher's own thread: taskloop.py).
LOOP_HELD_UP_SECONDS = 0.5
# How often the watchdog looks at the dispatcher's thread (watchdog.py).
WATCHDOG_INTERVAL_SECONDS = 0.25
# How often the dispatcher looks for cancelled or deleted executions among those in flight.
WATCH_INTERVAL_SECONDS = 1.0
# How often it renews the leases of its running steps (one UPDATE for all of them), or every
# third of FLOW_LEASE_SECONDS if that is shorter.
RENEW_INTERVAL_SECONDS = 1.0
# How often a dispatcher with room looks for newly ready executions besides its job's own: one
# indexed query, then a claim of the whole batch. Looks that find nothing back off, doubling
# up to the slower pace, so a worker whose room stays empty does not poll the database 20
# times a second; one that finds work looks again at the fast pace.
FILL_INTERVAL_SECONDS = 0.05
FILL_INTERVAL_MAX_SECONDS = 1.0
# At most this many finished steps are written in one transaction (SQLite holds its one write
# lock that long).
RECORD_BATCH = 50
