"""Task mode on the launcher: the working folder that travels with a task, and its outputs."""
