"""The runner lifecycle, one step per module:

    prepare.py   spec → the launch: every attempt resolved, budget and inputs checked
    failover.py  which attempt comes after a failed one
    up.py        claim the name, register, apply the first attempt that fits, wait, record
    down.py      destroy runners by name
    teardown.py  what down, rollback and failover share: destroy, roll back, deregister
    guard.py     Ctrl-C and SIGTERM during `up`: exit 130 with nothing left, or 0 and running

Imports nothing at package level: `status` and `--help` do not load the lifecycle.
"""
