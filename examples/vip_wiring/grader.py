"""Grades a vip_wiring reply: Python code made of connect(port, signal) calls.

The reply is parsed with ast. When it is nothing but connect() calls with two
string literals, it is executed with a recording connect() (no builtins, no
loops possible) and earns the 0.2 "runs as given" part; otherwise the
connect() lines that do parse are read one by one.
The other 0.8 is the wiring, per expected port: 1 for the right signal, 0.3
for the right port on a wrong signal; a call on an unknown port earns 0.1 when
its signal is one the IP needs, and every call beyond the number of ports
costs 0.5. A port wired twice counts once, at its worst.
"""
import ast


def _calls(tree):
    calls = []
    only_connect = True
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "connect" and len(call.args) == 2
                and not call.keywords
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                        for a in call.args)):
            calls.append(call)
        else:
            only_connect = False
    return calls, only_connect


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    clean = 1.0
    if text.startswith("```"):
        text = text.strip("`")
        if text.startswith("python"):
            text = text[len("python"):]
        clean = 0.9
    wired = []
    try:
        tree = ast.parse(text)
        calls, only_connect = _calls(tree)
        if only_connect and calls:
            # Run it: the reply is working code only if it executes.
            exec(compile(tree, "<reply>", "exec"),
                 {"__builtins__": {}, "connect": lambda p, s: wired.append((p, s))})
        else:
            clean *= 0.5
            wired = [(c.args[0].value, c.args[1].value) for c in calls]
    except (SyntaxError, ValueError):
        clean *= 0.5
        for line in text.splitlines():
            try:
                calls, _ = _calls(ast.parse(line.strip()))
            except (SyntaxError, ValueError):
                continue
            wired += [(c.args[0].value, c.args[1].value) for c in calls]
    expected = item["wiring"]
    earned = {}
    for port, signal in wired:
        if port in expected:
            credit = 1.0 if expected[port] == signal else 0.3
            earned[port] = min(earned.get(port, credit), credit)
        elif signal in expected.values():
            earned[("unknown", len(earned))] = 0.1
    extra = max(0, len(wired) - len(expected))
    wiring = max(0.0, (sum(earned.values()) - 0.5 * extra) / len(expected))
    runs = 0.2 if clean == 1.0 else 0.0
    return runs + 0.8 * min(1.0, wiring) * (1.0 if clean == 1.0 else 0.75)
