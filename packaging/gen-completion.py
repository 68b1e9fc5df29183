#!/usr/bin/python3
"""Print the bash completion script for a click program (default: mxhook).

Equivalent to `_MXHOOK_COMPLETE=bash_source mxhook`, but does not import mxhook.cli: click's
bash script is the same for every program (it only calls back into the program with
_MXHOOK_COMPLETE=bash_complete at completion time), so it is generated from click alone and the
build does not depend on the CLI's own imports.
"""
import sys

import click
from click.shell_completion import BashComplete

prog = sys.argv[1] if len(sys.argv) > 1 else "mxhook"
var = "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())
source = BashComplete(click.Command(prog), {}, prog, var).source()
sys.stdout.write("# bash completion for {} (generated from python3-click {})\n".format(
    prog, click.__version__) + source.rstrip("\n") + "\n")
