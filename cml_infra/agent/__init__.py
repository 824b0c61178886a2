"""The on-instance agent: runs the task or the forge's runner, watches idle time and lifetime,
and ends the instance.

Standard library only: it travels inside the startup script (as the package
`cml_infra_agent`, one heredoc per module) and runs with whatever python3 the image has, so
nothing is installed from PyPI on an instance. Modules:

    loop.py           the Agent: task or runner, idle and TTL clocks, the status file
    github_runner.py  GitHub's runner on the instance: install, configure, run, watch
    hooks.py          per-cloud hooks: spot interruption notices and self-destroy calls
    host.py           before any work: the GPUs awaited, Docker and the NVIDIA toolkit
    __main__.py       `python3 -m cml_infra_agent --config agent-config.json`
"""
