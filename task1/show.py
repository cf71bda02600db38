"""`python -m task1.show`: the command in task1/tools/show.py."""

from task1.tools.show import main

if __name__ == "__main__":
    main()
