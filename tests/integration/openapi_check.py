"""Checks recorded HTTP exchanges against docs/openapi.yaml. Run by test_openapi.py under Debian's
python3, which has python3-yaml and python3-jsonschema:

    /usr/bin/python3 openapi_check.py SPEC EXCHANGES

EXCHANGES is a JSON list of {"method", "path" (the spec's template), "status", "content_type",
"body" (text), "headers" (lower-case names)}. A method a path does not take must be answered 405
with an Allow header naming exactly the methods the spec gives that path. Prints a JSON report: "problems" (each a sentence),
"operations" (every "METHOD path" the spec has) and "covered" (those some exchange exercised)."""

import json
import sys

import jsonschema
import yaml


def main(spec_path, exchanges_path):
    with open(spec_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    with open(exchanges_path, encoding="utf-8") as f:
        exchanges = json.load(f)
    resolver = jsonschema.RefResolver.from_schema(spec)
    jsonschema.Draft202012Validator.check_schema({"$defs": spec["components"]["schemas"]})

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            node = resolver.resolve(node["$ref"])[1]
        return node

    problems, covered = [], set()
    operations = sorted("%s %s" % (method.upper(), path)
                        for path, item in spec["paths"].items()
                        for method in item if method in ("get", "put", "post", "delete"))
    for x in exchanges:
        where = "%s %s -> %s" % (x["method"], x["path"], x["status"])
        item = spec["paths"].get(x["path"])
        if item is None:
            problems.append("%s: the spec has no such path" % where)
            continue
        op = item.get(x["method"].lower())
        if op is None:
            # A method the path does not take: 405, naming in Allow the methods it does take.
            allowed = sorted(m.upper() for m in item if m in ("get", "put", "post", "delete"))
            allow = sorted(m.strip() for m in x["headers"].get("allow", "").split(",") if m.strip())
            if x["status"] != 405 or allow != allowed:
                problems.append("%s: a method the path does not take must get 405 with Allow: %s (got Allow: %s)"
                                % (where, ", ".join(allowed), ", ".join(allow)))
            elif x["content_type"].split(";")[0] != "application/json" or "error" not in json.loads(x["body"]):
                problems.append("%s: a 405 without a JSON error body" % where)
            continue
        covered.add("%s %s" % (x["method"], x["path"]))
        response = resolve(op["responses"].get(str(x["status"])))
        if response is None:
            problems.append("%s: status not in the spec (it lists %s)" % (where, sorted(op["responses"])))
            continue
        for name, header in response.get("headers", {}).items():
            if header.get("required") and name.lower() not in x["headers"]:
                problems.append("%s: header %s missing" % (where, name))
        content = response.get("content")
        media = x["content_type"].split(";")[0].strip()
        if not content:
            if x["body"]:
                problems.append("%s: a body where the spec has none" % where)
            continue
        if media not in content:
            problems.append("%s: content type %r, the spec has %s" % (where, media, sorted(content)))
            continue
        schema = content[media].get("schema", {})
        body = json.loads(x["body"]) if media == "application/json" else x["body"]
        validator = jsonschema.Draft202012Validator(schema, resolver=resolver)
        for error in validator.iter_errors(body):
            problems.append("%s: %s at %s" % (where, error.message, "/".join(map(str, error.absolute_path))))
    print(json.dumps({"problems": problems, "operations": operations, "covered": sorted(covered)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
