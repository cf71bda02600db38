"""`python -m task1.eval`: the command in task1/tools/eval.py."""

from task1.tools.eval import main

if __name__ == "__main__":
    main()
