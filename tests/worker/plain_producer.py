"""A plain Celery producer: `celery[redis]` with Celery's defaults (JSON), nothing of gpufleet.

    python plain_producer.py REDIS_URL QUEUE < calls.json > results.json

`calls.json` is a list of calls: `{"task": name, "args": [...], "kwargs": {...}}`, or `{"chord": [calls],
"body": call}`. Each result is `{"ok": value}` or `{"error": type name, "message": text}`. With
`--refuse-imports`, importing gpufleet, msgpack, NumPy or CuPy fails in this process, as where they are not
installed. The script imports nothing but Celery, so it runs as it is in a virtualenv with only celery[redis].
"""

import json
import sys

REFUSED = ("gpufleet", "gpufleet_worker", "gpufleet_tools", "msgpack", "numpy", "cupy")


class _Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ImportError(f"{name} is not installed for this producer")
        return None


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--refuse-imports":
        sys.meta_path.insert(0, _Refuse)
        args = args[1:]
    url, queue = args
    from celery import Celery, chord

    app = Celery("plain-producer", broker=url, backend=url)

    def signature(call):
        return app.signature(call["task"], args=call.get("args", ()), kwargs=call.get("kwargs", {}),
                             queue=queue)  # fmt: skip

    out = []
    for call in json.load(sys.stdin):
        if "chord" in call:
            result = chord([signature(c) for c in call["chord"]])(signature(call["body"]))
        else:
            result = signature(call).apply_async()
        try:
            out.append({"ok": result.get(timeout=120)})
        except Exception as exc:
            out.append({"error": type(exc).__name__, "message": str(exc)})
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in REFUSED)
    json.dump({"results": out, "loaded": loaded}, sys.stdout)


if __name__ == "__main__":
    main()
