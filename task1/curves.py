"""`python -m task1.curves`: the command in task1/tools/curves.py."""

from task1.tools.curves import main

if __name__ == "__main__":
    main()
