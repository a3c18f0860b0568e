"""Regenerates test data under tests/data/segment/ from Segment's sources: see README.md."""

import os
from pathlib import Path

WORK = os.environ.get("WORK", "/tmp/segment-work")
DATA = str(Path(__file__).resolve().parent.parent)
import json

SRC = "segmentio/action-destinations@970a17ee8d064501db7ae555f4d90f17befadfc0"
MK = "packages/core/src/mapping-kit/"
OUT = DATA + "/"
U = "__undefined__"


def load(n):
    return json.load(open(f"{WORK}/{n}.json"))


def case(c, mapping, payload):
    e = c["expect"]
    out = {"name": c["name"], "mapping": mapping, "payload": payload}
    if "output" in e:
        if e["output"] == U:
            out["absent"] = True
        else:
            out["output"] = e["output"]
    else:
        out["raises"] = e["raises"]
        if e.get("message"):
            out["upstream_error"] = e["message"]
    return out


def transform_cases(name):
    cases, na = [], []
    for c in load(name):
        if c["fn"] == "getFieldValueKeys":
            na.append(
                {
                    "name": c["name"],
                    "mapping": c["args"][0],
                    "reason": "getFieldValueKeys lists the fields a mapping reads for Segment's UI; cdpd has no such helper",
                }
            )
            continue
        args = c["args"]
        payload = args[1] if len(args) > 1 else {}
        cases.append(case(c, args[0], payload))
    return cases, na


def write(fname, source, comment, cases, na):
    doc = {"upstream": f"{SRC}:{source}", "comment": comment, "cases": cases, "not_applicable": na}
    with open(OUT + fname, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(fname, len(cases), len(na))


cases, na = transform_cases("index.iso")
write(
    "mapping-kit-index.json",
    MK + "__tests__/index.iso.test.ts",
    "Each call transform(mapping, payload) in the upstream test and what it asserts: output (absent: undefined), or raises. A payload the test leaves out is {}; keys whose value is undefined are dropped.",
    cases,
    na,
)
cases, na = transform_cases("liquid")
write(
    "mapping-kit-liquid.json",
    MK + "__tests__/liquid.test.ts",
    "Each transform(mapping, payload) call of the upstream @liquid tests; upstream_error is the message (re: a pattern) the test expects.",
    cases,
    na,
)
cases = []
for c in load("placeholders"):
    t, *rest = c["args"]
    cases.append(case(c, {"@template": t}, rest[0] if rest else {}))
write(
    "mapping-kit-placeholders.json",
    MK + "__tests__/placeholders.test.ts",
    "render(template, data) is what @template does: each upstream call is written as transform({'@template': template}, data).",
    cases,
    [],
)
cases = []
for c in load("flatten"):
    obj, *rest = c["args"]
    sep = rest[1] if len(rest) > 1 else "."
    omit = rest[2] if len(rest) > 2 else False
    directive = {"value": obj, "separator": sep}
    if omit:
        directive["omitArrays"] = True
    cases.append(case(c, {"@flatten": directive}, {}))
write(
    "mapping-kit-flatten.json",
    MK + "__tests__/flatten.test.ts",
    "flattenObject(value, '', separator, omitArrays) is what @flatten does: each upstream call is written as transform({'@flatten': {value, separator, omitArrays}}, {}).",
    cases,
    [],
)
na = [
    {
        "name": c["name"],
        "value": c["args"][0],
        "reason": "getFieldValueKeys lists the fields a mapping reads for Segment's UI; cdpd has no such helper",
    }
    for c in load("value-keys")
]
write(
    "mapping-kit-value-keys.json",
    MK + "__tests__/value-keys.test.ts",
    "Not ported: see not_applicable.",
    [],
    na,
)
# schema fixtures, read by validate.test.ts
import os

cases = []
for kind in ("valid", "invalid"):
    d = os.environ["SEGMENT_SRC"] + f"/{MK}schema-fixtures/{kind}"
    for f in sorted(os.listdir(d)):
        fx = json.load(open(f"{d}/{f}"))
        c = {"name": f"{kind}/{f}", "mapping": fx["mapping"], "valid": kind == "valid"}
        if "expectError" in fx:
            c["upstream_error"] = fx["expectError"]
        cases.append(c)
write(
    "mapping-kit-schema-fixtures.json",
    MK + "schema-fixtures/ (read by __tests__/validate.test.ts)",
    "Each fixture: the mapping, whether validate() accepts it, and the error(s) upstream reports (a path like /@replace/pattern names the place).",
    cases,
    [],
)
r = load("fql")
doc = {
    "upstream": f"{SRC}:packages/destination-subscriptions/src/__tests__/",
    "comment": (
        "evaluate: each validate(ast, message) assertion of validate.test.ts, with the AST written as FQL by "
        "Segment's own generateFql (only where Segment's parseFql reads that FQL back to the same AST). "
        "parse: each FQL text of fql.test.ts and generate-fql.test.ts; parses says whether Segment's parseFql "
        "accepts it, and probes are messages (made by varying each compared field) with the answer of "
        "Segment's validate(parseFql(fql), message), computed by running Segment's code."
    ),
    "evaluate": r["evaluate"],
    "parse": r["parse"],
    "not_applicable": r["not_applicable"],
}
with open(OUT + "destination-subscriptions.json", "w") as f:
    json.dump(doc, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(
    "fql",
    len(r["evaluate"]),
    len(r["parse"]),
    sum(len(p.get("probes", [])) for p in r["parse"]),
    len(r["not_applicable"]),
)
