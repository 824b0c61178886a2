"""The on-instance agent: runs the task or the forge's runner, watches idle time and lifetime,
and ends the instance.

Standard library only: it travels inside the startup script (as the package
`cml_infra_agent`, one heredoc per module) and runs with whatever python3 the image has, so
nothing is installed from PyPI on an instance. Modules:

    loop.py           the Agent: task or runner, idle and TTL clocks, the status file
    github_runner.py  GitHub's runner on the instance: install, configure, run, watch
    task.py           task mode's workdir in, outputs out
    report.py         the reports (status, log, outputs) to a folder or presigned URLs
    hooks.py          the per-cloud hooks by name, and the metadata server's client
    hooks_*.py        each cloud's spot interruption notice and self-destroy call
    host.py           before any work: the GPUs awaited, Docker and the NVIDIA toolkit
    __main__.py       `python3 -m cml_infra_agent --config agent-config.json`
"""
