"""`cml-infra cleanup`: the scheduled reaper, independent of the agent and of any local state.

    world.py    what is out there, gathered once: instances by tag, what modules left beside
                them (leftovers), registrations, records
    rules.py    small registered filters: each matches one kind of item and says why
    actions.py  what is done to a match: destroy, deregister, forget, reap
    run.py      plan → the --max-destroy guard → act → one row per match

No rule ever reads "not in my state dir" as "abandoned", except `untracked`, which is opt-in for
set-ups whose state sees every launch; nothing without our tag is ever touched.
"""
