"""Fetch plotly.js's official cartesian bundle from npm into this environment, for the dashboard.

``./dev`` and ``binder/postBuild`` run it after installing hessviz: ``npm pack
plotly.js-cartesian-dist-min@<version>`` (npm checks the registry's integrity hash), at exactly
the plotly.js version plotly.py ships, then :func:`hessviz._plotly_bundle.install` keeps the file
only if it is that bundle at that version. Silent when the bundle is already there; without npm,
or when npm fails, it says so and exits 0: pages then get plotly.py's full bundle.

Run:  .venv/bin/python scripts/fetch_plotly_js.py [--npm PATH] [--prefix ENV]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hessviz import _plotly_bundle as bundle


def fetch(prefix: str | None = None, npm: str = "npm") -> Path | None:
    """The installed bundle, or ``None`` (with a note on stderr) when it could not be had."""
    if bundle.cartesian_bundle(prefix) is not None:
        return bundle.cartesian_path(prefix)
    version = bundle.full_version()
    fallback = f"pages get plotly.py's full plotly.js {version}"
    if shutil.which(npm) is None:
        print(f"hessviz: no npm here; {fallback}", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="hessviz-npm-") as tmp:
        try:
            subprocess.run(
                [npm, "pack", f"{bundle.PACKAGE}@{version}", "--silent", "--pack-destination", tmp],
                cwd=tmp,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=300,
            )
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as archive:
                member = archive.extractfile(bundle.PACKAGE_FILE)
                if member is None:
                    raise ValueError(f"no {bundle.PACKAGE_FILE} in {tarball.name}")
                code = member.read()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or error
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            print(f"hessviz: npm gave no {bundle.PACKAGE}@{version} ({detail.strip()[:300]}); "
                  f"{fallback}", file=sys.stderr)  # fmt: skip
            return None
    installed = bundle.install(code, prefix)
    if installed is None:
        print(f"hessviz: {bundle.PACKAGE}@{version} is not plotly.js {version}; {fallback}",
              file=sys.stderr)  # fmt: skip
    return installed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm", default="npm", help="the npm to run (default: npm on PATH)")
    parser.add_argument("--prefix", default=None, help="environment (default: this Python's)")
    args = parser.parse_args(argv)
    if bundle.cartesian_bundle(args.prefix) is not None:
        return  # silent when it is there
    installed = fetch(args.prefix, args.npm)
    if installed is not None:
        print(f"hessviz: plotly.js cartesian bundle at {installed}", file=sys.stderr)


if __name__ == "__main__":
    main()
