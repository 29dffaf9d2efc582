#!/usr/bin/env python3
"""Checks an OSCAL assessment-results document written by `secmetrics report --format oscal`.

1. JSON Schema: the official OSCAL 1.1.2 assessment-results schema vendored beside this file
   (see README.md here). Its `pattern`s use Unicode classes such as `\\p{L}` that Python's `re`
   lacks, so `pattern` is checked with the `regex` module (same semantics as the schema's
   ECMA-262/Java regexes for these classes); every other keyword is jsonschema's Draft 7.
2. compliance-trestle: the document loads as `trestle.oscal.assessment_results.AssessmentResults`.

Usage: check.py FILE...   Exit 0 when every file passes both; prints one line per file.
Run it with the interpreter of target/oscal-venv (scripts/setup installs it), or any python3
with the packages of requirements.txt.
"""

import json
import pathlib
import sys

import jsonschema
import regex

HERE = pathlib.Path(__file__).resolve().parent
SCHEMA = HERE / "oscal_assessment-results_schema.json"


def unicode_pattern(validator, pattern, instance, schema):
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def schema_errors(document):
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.extend(
        jsonschema.Draft7Validator, {"pattern": unicode_pattern}
    )
    validator = validator_class(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))


def trestle_error(path):
    import shutil
    import tempfile

    from trestle.oscal.assessment_results import AssessmentResults

    try:
        if path.suffix != ".json":  # trestle picks the parser by extension
            tmp = pathlib.Path(tempfile.mkdtemp()) / "assessment-results.json"
            shutil.copyfile(path, tmp)
            path = tmp
        model = AssessmentResults.oscal_read(path)
    except Exception as e:  # trestle raises several types; all mean "does not load"
        return f"{type(e).__name__}: {e}"
    if model is None:
        return "trestle read nothing"
    return None


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for p in map(pathlib.Path, paths):
        document = json.loads(p.read_text(encoding="utf-8"))
        errors = schema_errors(document)
        for e in errors[:20]:
            where = "/".join(str(x) for x in e.absolute_path)
            print(f"{p}: schema: /{where}: {e.message}")
        trestle = trestle_error(p)
        if trestle:
            print(f"{p}: trestle: {trestle}")
        if errors or trestle:
            failed = True
            continue
        ar = document["assessment-results"]
        observations = sum(len(r.get("observations", [])) for r in ar["results"])
        findings = sum(len(r.get("findings", [])) for r in ar["results"])
        print(
            f"{p}: ok: OSCAL {ar['metadata']['oscal-version']} assessment-results, "
            f"{len(ar['results'])} results, {observations} observations, {findings} findings "
            f"(schema and compliance-trestle)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
