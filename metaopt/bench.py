"""Kept only so the old command `python -m metaopt.bench` still works: the study lives in `studies.bench`
(it needs both `metaopt` and `codec`, and `metaopt` does not import `codec`)."""
from studies.bench import main

if __name__ == "__main__":
    main()
