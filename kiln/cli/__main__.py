"""``python -m kiln.cli``."""

from kiln.cli import main

if __name__ == "__main__":
    main()
