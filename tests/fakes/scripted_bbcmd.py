#!/usr/bin/env python3
"""A bbcmd stand-in that replays fixed replies, for testing what a caller does with each of them.

The script is a JSON file named by ``$SCRIPTED_BBCMD_SCRIPT``::

    {"rules": [{"match": "REGEX", "replies": [REPLY, ...]}, ...], "default": REPLY}

A call is given to the first rule whose regular expression is found in its arguments (joined with
spaces); the n-th call of a rule gets ``replies[n]``, the last reply repeating. A REPLY is
``{"stdout": TEXT or JSON value, "exit": N, "sleep": SECONDS, "crash": true}``: sleep, print, then exit
with N (or be killed by SIGKILL when ``crash``). Every call appends ``{"argv": [...], "rule": i}`` as
one line to ``$SCRIPTED_BBCMD_LOG``, so tests can count the calls (and the n-th call of a rule is known
from the log alone: the fake keeps no other state).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import Any


def main() -> int:
    with open(os.environ["SCRIPTED_BBCMD_SCRIPT"], encoding="utf-8") as f:
        script: dict[str, Any] = json.load(f)
    log_path = os.environ["SCRIPTED_BBCMD_LOG"]
    argv = sys.argv[1:]
    joined = " ".join(argv)
    rule_index = next(
        (i for i, rule in enumerate(script.get("rules", [])) if re.search(rule["match"], joined)),
        -1,
    )
    try:
        with open(log_path, encoding="utf-8") as f:
            earlier = sum(1 for line in f if json.loads(line)["rule"] == rule_index)
    except FileNotFoundError:
        earlier = 0
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"argv": argv, "rule": rule_index}) + "\n")
    if rule_index < 0:
        reply = script.get(
            "default", {"stdout": {"id": "1", "rc": "-1", "error": {"text": "unscripted call"}}, "exit": 255}
        )
    else:
        replies = script["rules"][rule_index]["replies"]
        reply = replies[min(earlier, len(replies) - 1)]
    time.sleep(float(reply.get("sleep", 0)))
    stdout = reply.get("stdout", "")
    sys.stdout.write(stdout if isinstance(stdout, str) else json.dumps(stdout, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    if reply.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return int(reply.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
