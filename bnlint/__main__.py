"""`python -m bnlint` entry point."""

from bnlint.cli import main

if __name__ == "__main__":
    main()
