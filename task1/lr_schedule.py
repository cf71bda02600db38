"""`python -m task1.lr_schedule`: the command in task1/tools/lr_schedule.py."""

from task1.tools.lr_schedule import main

if __name__ == "__main__":
    main()
