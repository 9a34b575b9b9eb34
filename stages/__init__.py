"""The six DVC stages, one entry point each (`python -m stages.<name>`); the code is in cxr/."""

import sys

# While `python -m stages.<name>` locates the stage, sys.argv[0] is "-m" (Python's documented
# behaviour): a stage runs as a program, so it goes quiet (cxr.core.quiet) before anything
# imports TensorFlow. Importing a stage in tests or a notebook changes nothing.
if sys.argv[:1] == ["-m"]:
    from cxr.core.quiet import quiet_process

    quiet_process()
