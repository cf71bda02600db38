"""`python -m task1.rerun`: the command in task1/tools/rerun.py."""

from task1.tools.rerun import main

if __name__ == "__main__":
    main()
