"""`python -m gpufleet` runs the operator; `python -m gpufleet <command>` runs any other CLI command."""

import sys

from gpufleet.cli import COMMANDS, main

args = sys.argv[1:]
raise SystemExit(main(args if args and args[0] in (*COMMANDS, "-h", "--help") else ["run", *args]))
