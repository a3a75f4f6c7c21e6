#!/usr/bin/env python3
"""Lints the Grafana dashboard (standard library only).

    deploy/dashboard_lint.py dashboards/agent.json          check; exit 1 listing every problem
    deploy/dashboard_lint.py --list dashboards/agent.json   print every PromQL expression, one per line
                                                            (panel targets and variable queries,
                                                            newlines folded), for end-to-end tests

Checks: valid JSON; the stable uid; the datasource / model / layer / method variables; every panel
(rows excepted) has fieldConfig.defaults.unit; every panel and target uses the $datasource variable;
every rate( / increase( (and irate, delta, ...) takes [$__rate_interval] as its range.
"""
import json
import re
import sys

RANGE_FUNCS = ("rate", "irate", "increase", "delta", "idelta", "deriv")


def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # collapsed rows keep their panels inside
            yield q


def call_args(expr, start):
    """The text between the parenthesis opening at expr[start] and its match."""
    depth = 0
    for i in range(start, len(expr)):
        if expr[i] == "(":
            depth += 1
        elif expr[i] == ")":
            depth -= 1
            if depth == 0:
                return expr[start + 1:i]
    return None


def range_problems(expr):
    problems = []
    for m in re.finditer(r"\b(" + "|".join(RANGE_FUNCS) + r")\s*\(", expr):
        args = call_args(expr, m.end() - 1)
        if args is None:
            problems.append(f"unbalanced parentheses after {m.group(1)}(")
            continue
        ranges = re.findall(r"\[([^\]]*)\]\s*$", args.strip())
        if ranges != ["$__rate_interval"]:
            problems.append(f"{m.group(1)}(...) must end in [$__rate_interval], has {args.strip()[-40:]!r}")
    return problems


def expressions(dash):
    """(where, expr) for every PromQL expression in the dashboard."""
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            yield f"variable {v['name']}", q.get("query") if isinstance(q, dict) else q
    for p in panels_of(dash):
        for t in p.get("targets", []) or []:
            if "expr" in t:
                yield f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t["expr"]


def lint(dash):
    problems = []
    if dash.get("uid") != "ml-repr-agent":
        problems.append(f"uid is {dash.get('uid')!r}, expected 'ml-repr-agent'")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    for name in ("datasource", "model", "layer", "method"):
        if name not in variables:
            problems.append(f"variable ${name} missing")
    ds = variables.get("datasource", {})
    if ds and (ds.get("type") != "datasource" or ds.get("query") != "prometheus"):
        problems.append("$datasource must be a datasource variable of type prometheus")
    ids = set()
    for p in panels_of(dash):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"{where}: no fieldConfig.defaults.unit")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        for t in targets:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where} target {t.get('refId')}: datasource is not ${{datasource}}")
            if not t.get("expr", "").strip():
                problems.append(f"{where} target {t.get('refId')}: empty expr")
    for where, expr in expressions(dash):
        for prob in range_problems(expr or ""):
            problems.append(f"{where}: {prob}")
    return problems


def main(argv):
    listing = "--list" in argv
    paths = [a for a in argv if a != "--list"]
    if len(paths) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(paths[0], encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{paths[0]}: not valid JSON: {e}", file=sys.stderr)
        return 1
    if listing:
        seen = set()
        for _, expr in expressions(dash):
            one_line = " ".join(expr.split())
            if one_line not in seen:
                seen.add(one_line)
                print(one_line)
        return 0
    problems = lint(dash)
    for prob in problems:
        print(f"{paths[0]}: {prob}", file=sys.stderr)
    if problems:
        return 1
    n = sum(1 for p in panels_of(dash) if p.get("type") != "row")
    print(f"{paths[0]}: OK ({n} panels, {sum(1 for _ in expressions(dash))} expressions)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
