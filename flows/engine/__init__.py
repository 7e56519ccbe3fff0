"""The engine: claim a step, run it, record it with the routing decision, go on.

The database is the truth and the queue only wakes workers (see docs/architecture.md):

1. A job carries only an execution id and runs the ``Dispatcher``, which *claims* ready
   steps with a conditional UPDATE (PENDING -> RUNNING, with a lease); a step whose UPDATE
   changed no row is another worker's.
2. Each task's coroutine runs on the task loop under its timeout, run by the dispatcher's
   own thread while it waits (no hop to another thread); once a second it renews the leases
   and stops tasks whose execution was cancelled or deleted, and a watchdog thread renews
   them while a task blocks the loop.
3. A step's result and the routing decision (the next step, or the execution's end) commit
   in one transaction. The next step is created already claimed by this worker, so it runs
   here without a queue round trip, until the step budget is spent; then it is left PENDING
   and a job is enqueued in the same transaction.
4. ``recover`` (every FLOW_REAP_EVERY_SECONDS in every worker process, ``ReaperTimer``) re-runs
   steps whose lease expired (their worker died) and wakes PENDING steps whose queue message
   was lost; ``reap`` (a django-q2 schedule) does that too and ends executions past their
   flow's timeout. Every job is idempotent.

One module a role, each importing only the public names of the others:

- ``transitions`` every status change of an execution or a step, and its lock order
- ``wakeup``      enqueue the job that wakes a worker (``wake``); wake steps nobody woke
- ``taskloop``    the event loop tasks run on (the dispatcher's thread), a task under its
                  timeout
- ``watchdog``    leases renewed while a task blocks the loop; one blocking it for good given up
- ``inputs``      the parsed flow, results so far, parameters with references resolved
- ``step``        build one step's task and start it on the task loop (``Flight``)
- ``outcome``     what a finished, failed, timed-out or stopped task amounts to
- ``routing``     what follows a finished step, decided from the flow alone
- ``claim``       the claim UPDATE, lease renewal and the cancel check
- ``fanout``      parallel, map and sub-flow steps: their child executions, started
- ``fanin``       children counted as they end; the control step joined from them
- ``redrive``     where a redrive resumes; a control step's earlier children taken over
- ``record``      write finished steps and their routing, one transaction a batch
- ``dispatcher``  the one step loop (``Dispatcher``, ``dispatch``: a worker's job)
- ``inline``      the same loop for one execution in this process (``run_inline``)
- ``reaper``      lost workers, lost wake-ups (``recover``, ``ReaperTimer``), flow timeouts
                  (``reap``)
- ``lost``        a step lost with its worker: run again, or failed for good
- ``duetimer``    wake delayed steps when the broker cannot deliver late (Redis)
- ``checkpoint``  SQLite: the write-ahead log copied back by a timer, not by a step's commit
- ``timing``      intervals, graces and batch sizes; ``worker``: this worker's name
"""

from flows.engine import admission, limits, transitions
from flows.engine.checkpoint import CheckpointTimer, start_checkpoint_timer
from flows.engine.claim import claim_steps, renew_leases
from flows.engine.dispatcher import Dispatcher, dispatch
from flows.engine.duetimer import DueStepTimer, start_due_step_timer, wake_due
from flows.engine.fanin import cancel_children, child_ended, lock_fanouts
from flows.engine.inline import run_inline
from flows.engine.inputs import flow_definition, results_scope, results_so_far
from flows.engine.outcome import StepOutcome
from flows.engine.reaper import ReaperTimer, reap, recover, start_reaper_timer
from flows.engine.redrive import CannotRedrive, plan_redrive
from flows.engine.taskloop import TaskLoop
from flows.engine.transitions import FOREVER, close_pending
from flows.engine.wakeup import JOB_FUNC, wake
from flows.engine.worker import worker_id

__all__ = [
    "FOREVER",
    "JOB_FUNC",
    "CannotRedrive",
    "CheckpointTimer",
    "Dispatcher",
    "DueStepTimer",
    "ReaperTimer",
    "StepOutcome",
    "TaskLoop",
    "admission",
    "cancel_children",
    "child_ended",
    "claim_steps",
    "close_pending",
    "dispatch",
    "flow_definition",
    "limits",
    "lock_fanouts",
    "plan_redrive",
    "reap",
    "recover",
    "renew_leases",
    "results_scope",
    "results_so_far",
    "run_inline",
    "start_checkpoint_timer",
    "start_due_step_timer",
    "start_reaper_timer",
    "transitions",
    "wake",
    "wake_due",
    "worker_id",
]
