"""Kept only so the old command `python -m metaopt.compare` still works: the study lives in `studies.compare`
(it needs both `metaopt` and `codec`, and `metaopt` does not import `codec`)."""
from studies.compare import main

if __name__ == "__main__":
    main()
