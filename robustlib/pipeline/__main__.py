"""The workspace's command line: switch profile, or check params.yaml before any compute.

    python -m robustlib.pipeline use smoke    # write params.yaml from profiles/smoke.yaml
    python -m robustlib.pipeline check        # every value of params.yaml, and the data it needs
"""

from __future__ import annotations

import argparse
import sys

from robustlib.data.datasets import MissingDataError
from robustlib.pipeline import check, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustlib.pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="check every value of params.yaml and that the data it names is in place")
    use = sub.add_parser("use", help="switch profile: write params.yaml from profiles/<NAME>.yaml")
    use.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "use":
            print(f"wrote {params.use_profile(args.name)} (profile {args.name}); now run `dvc repro`")
        else:
            root = params.project_root()
            loaded = params.load(root / "params.yaml")
            check.check(loaded, root)
            print(f"params.yaml OK (profile {loaded['base'].get('profile')}, "
                  f"runs: {', '.join(params.all_runs(loaded))})")
    except (params.ParamsError, FileNotFoundError, MissingDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
