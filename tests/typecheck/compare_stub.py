"""Fail if marathon-stubs/__init__.pyi and marathon.py's annotations disagree.

Usage: python compare_stub.py PATH/TO/marathon.py PATH/TO/marathon-stubs/__init__.pyi

mypy's stubtest compares the stub with the running module (names,
parameters, defaults), but not with the module's annotations. This builds
each file with mypy as the module `marathon` and compares, for every public
name the stub declares, the type mypy gives it in both: functions, methods,
properties, class and instance attributes. A name that marathon.py does not
annotate or infer (the models, built at run time) is left to stubtest.
"""

import sys

from mypy import build
from mypy.modulefinder import BuildSource
from mypy.nodes import Decorator, FuncDef, MypyFile, OverloadedFuncDef, TypeInfo, Var
from mypy.options import Options


def _public(name):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _type_of(node):
    if isinstance(node, Decorator):  # a property
        node = node.func
    if isinstance(node, (FuncDef, OverloadedFuncDef, Var)):
        return None if node.type is None else str(node.type)
    return None


def types(path):
    """{qualified name: type} of `path`, built as the module `marathon`."""
    options = Options()
    options.python_version = sys.version_info[:2]
    options.incremental = False
    options.ignore_missing_imports = True  # marathon_migrations: no types, none needed
    result = build.build([BuildSource(path, "marathon")], options)
    errors = [line for line in result.errors if path in line and "error:" in line]
    if errors:
        sys.exit("\n".join(errors))
    tree = result.graph["marathon"].tree
    assert isinstance(tree, MypyFile)
    found = {}
    for name, symbol in tree.names.items():
        node = symbol.node
        if not _public(name) or symbol.module_public is False:
            continue
        if isinstance(node, TypeInfo):
            if node.module_name != "marathon":
                continue
            found[name] = "class(%s)" % ", ".join(str(base) for base in node.bases)
            for member, inner in node.names.items():
                if _public(member):
                    found["%s.%s" % (name, member)] = _type_of(inner.node)
        else:
            found[name] = _type_of(node)
    return found


def main(source, stub):
    in_source, in_stub = types(source), types(stub)
    differ = [
        "%s\n    marathon.py: %s\n    stub:        %s" % (name, in_source[name], type_)
        for name, type_ in sorted(in_stub.items())
        if in_source.get(name) is not None and in_source[name] != type_
    ]
    if differ:
        print("The stub and marathon.py's annotations differ:\n" + "\n".join(differ))
        return 1
    compared = sum(1 for name in in_stub if in_source.get(name) is not None)
    print(
        "The stub agrees with marathon.py's annotations (%d names compared)." % compared
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
