"""Fail unless the sdist and the wheel in DIR each hold what a user must get.

Usage: python .ci/shipped.py DIR  (run by `tox -e package`)
"""

import glob
import os
import sys
import tarfile
import zipfile

# Path endings that each archive must contain.
WANTED = {
    "sdist": ["/LICENSE", "/marathon.py", "/marathon_migrations/__init__.py"],
    "wheel": [
        ".dist-info/licenses/LICENSE",
        "marathon.py",
        "marathon_migrations/__init__.py",
    ],
}


def names(path):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    with tarfile.open(path) as archive:
        return archive.getnames()


def main(folder):
    missing = []
    for kind, pattern in (("sdist", "*.tar.gz"), ("wheel", "*.whl")):
        found = glob.glob(os.path.join(folder, pattern))
        if len(found) != 1:
            missing.append(
                "%s: expected one %s in %s, found %r" % (kind, pattern, folder, found)
            )
            continue
        held = names(found[0])
        for ending in WANTED[kind]:
            if not any(name.endswith(ending) for name in held):
                missing.append(
                    "%s %s lacks %s" % (kind, os.path.basename(found[0]), ending)
                )
    for line in missing:
        print(line, file=sys.stderr)
    if not missing:
        print("shipped: LICENSE and the module in the sdist and the wheel")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
