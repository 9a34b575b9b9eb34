"""The DVC stages, one module each (`python3 -m stages.<name>`); the code is in cxr/."""

import sys

# While `python3 -m stages.<name>` locates the stage, sys.argv[0] is "-m" (Python's documented
# behaviour): a stage runs as a program. It first makes sure it runs in a Python with the
# project's packages (DVC starts the `python` on PATH: cxr.core.interpreter), then goes quiet
# (cxr.core.quiet) before anything imports TensorFlow. Importing a stage in tests or a notebook
# changes nothing.
if sys.argv[:1] == ["-m"]:
    from cxr.core.interpreter import ensure_project_python

    ensure_project_python()

    from cxr.core.quiet import quiet_process

    quiet_process()
