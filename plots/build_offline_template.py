"""Write plots/offline.html, the `dvc plots show` page with Vega inlined, from npm tarballs.

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python plots/build_offline_template.py /tmp/vega-5.20.2.tgz /tmp/vega-lite-5.2.0.tgz \
        /tmp/vega-embed-6.18.2.tgz

Each package's browser build (the file its package.json names for jsDelivr, the file DVC's
default page loads from the CDN) is inlined in the given order, and its LICENSE is copied to
plots/LICENSE.<package>. Only the trailing source-map comment is dropped: the page has no .map
files beside it.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

PLOTS_DIR = Path(__file__).resolve().parent
SOURCE_MAP = "//# sourceMappingURL="
# dvc_render fills {refresh_tag} and {plot_divs}; {scripts} (its CDN <script> tags) is left out
# on purpose, so the page never reaches for the network.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {names}: inlined (plots/build_offline_template.py), so this page renders offline;
         licences in plots/LICENSE.* of the repository. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def package_script(tarball: Path) -> tuple[str, str]:
    """`name@version` and the browser build as an inline <script>; its LICENSE is copied."""
    with tarfile.open(tarball) as archive:

        def member(name: str) -> str:
            extracted = archive.extractfile(f"package/{name}")
            if extracted is None:
                raise SystemExit(f"{tarball}: package/{name} missing")
            return extracted.read().decode("utf-8")

        manifest = json.loads(member("package.json"))
        code = member(manifest["jsdelivr"])
        licence = member("LICENSE")
    lines = [line for line in code.splitlines() if not line.startswith(SOURCE_MAP)]
    code = "\n".join(lines)
    if "</script" in code.lower() or "<!--" in code:
        raise SystemExit(f"{tarball}: its code would end or comment out an inline <script>")
    name = f"{manifest['name']}@{manifest['version']}"
    license_name = manifest["license"]
    banner = f"/*! {name} | {license_name} | see plots/LICENSE.{manifest['name']} */"
    (PLOTS_DIR / f"LICENSE.{manifest['name']}").write_text(licence, encoding="utf-8")
    return name, f"    <script>{banner}\n{code}\n    </script>"


def main(argv: Sequence[str] | None = None) -> int:
    """Build plots/offline.html from the given vega, vega-lite and vega-embed tarballs."""
    tarballs = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not tarballs:
        raise SystemExit(__doc__)
    packages = [package_script(tarball) for tarball in tarballs]
    page = PAGE.format(
        names=", ".join(name for name, _ in packages),
        scripts="\n".join(script for _, script in packages),
    )
    (PLOTS_DIR / "offline.html").write_text(page, encoding="utf-8")
    print(f"plots/offline.html: {', '.join(name for name, _ in packages)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
