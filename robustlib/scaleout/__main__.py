"""``python -m robustlib.scaleout``: see ``robustlib.scaleout.runner``."""

from robustlib.scaleout.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
