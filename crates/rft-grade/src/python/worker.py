# The trusted side of a Python grader worker: OpenRFT starts it with `python -I -B -c`, inside the
# sandbox (crates/rft-grade/src/python/sandbox.rs), and talks to it with one JSON object per line.
#   parent -> worker: {"source": "...", "output_limit": N}   then   {"sample": {...}, "item": {...}}
#   worker -> parent: {"loaded": true} | {"reward": x} | {"error": "runtime", "details": "..."}
# The user's code never sees the protocol pipes: fds 0-2 are /dev/null and print() goes to a
# capped buffer whose tail is returned with errors.
import io
import json
import math
import numbers
import os
import sys
import traceback


class _CappedText(io.TextIOBase):
    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0
        self.dropped = 0

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            kept = text[:room]
            self.parts.append(kept)
            self.size += len(kept)
            self.dropped += len(text) - len(kept)
        else:
            self.dropped += len(text)
        return len(text)

    def take(self):
        text = "".join(self.parts)
        if self.dropped:
            text += "\n[... %d more characters of output dropped]" % self.dropped
        self.parts, self.size, self.dropped = [], 0, 0
        return text


def _describe_failure(captured, limit):
    details = traceback.format_exc()
    output = captured.take()
    if output:
        details = "output:\n" + output + "\n" + details
    return details[-limit:]


def _check_reward(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("grade() must return a float, got %s: %r" % (type(value).__name__, value)[:500])
    reward = float(value)
    if not math.isfinite(reward):
        raise ValueError("grade() must return a finite float, got %r" % reward)
    return reward


def _main():
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8", newline="\n")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    setup = json.loads(proto_in.readline())
    limit = int(setup["output_limit"])
    captured = _CappedText(limit)
    sys.stdout = sys.stderr = captured
    sys.stdin = io.StringIO()

    def reply(message):
        proto_out.write(json.dumps(message) + "\n")
        proto_out.flush()

    namespace = {"__name__": "grader", "__builtins__": __builtins__}
    try:
        exec(compile(setup["source"], "grader.py", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the grader source must define a function grade(sample, item)")
        import inspect

        try:
            inspect.signature(grade).bind(None, None)
        except (TypeError, ValueError) as err:
            raise TypeError("grade must take two positional arguments (sample, item): %s" % err)
    except BaseException:
        reply({"error": "runtime", "details": _describe_failure(captured, limit)})
        return
    reply({"loaded": True})

    for line in proto_in:
        request = json.loads(line)
        try:
            reward = _check_reward(grade(request["sample"], request["item"]))
        except BaseException:
            reply({"error": "runtime", "details": _describe_failure(captured, limit)})
            continue
        captured.take()
        reply({"reward": reward})


_main()
