"""`python3 -m cml_infra_agent --config agent-config.json [--end-now REASON]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .loop import Agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cml_infra_agent", description="The cml-infra agent.")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--end-now", metavar="REASON", help="end the instance at once")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8"))
    agent = Agent(config, args.config.resolve().parent)
    return agent.end_now(args.end_now) if args.end_now else agent.run()


if __name__ == "__main__":
    sys.exit(main())
