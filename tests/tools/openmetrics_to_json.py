#!/usr/bin/env python3
"""Parses an OpenMetrics text exposition (stdin) with prometheus_client's strict parser and
prints its samples as JSON: [{"family", "type", "name", "labels", "value"}, ...].

A malformed exposition (bad syntax, histogram buckets out of order or not adding up to
_count, missing # EOF) makes the parser raise: exit status 1 with the reason on stderr.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.append(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": s.name,
                        "labels": s.labels,
                        "value": s.value,
                    }
                )
    except Exception as e:  # the parser's errors are plain ValueErrors
        print(f"invalid OpenMetrics exposition: {e}", file=sys.stderr)
        return 1
    json.dump(samples, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
