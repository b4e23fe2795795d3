"""Run benchmarks and print their results as one JSON object on stdout.

    python -m bench.run                      # every benchmark but the ones in BY_NAME_ONLY
    python -m bench.run encode               # only `encode`
    python -m bench.run encode --threads 1,2 --model path/to/folder

Adding a benchmark: write `bench/<module>.py` with `parser()` (its argparse options) and
`run(argv: list[str]) -> dict` (parse argv with `parser().parse_known_args`, ignore the rest: all
options go to every selected benchmark) and list it in BENCHMARKS below. Progress and notes go
to stderr; only the final JSON goes to stdout, so `python -m bench.run > results.json` works.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time

# name -> module (with run(argv) -> dict)
BENCHMARKS: dict[str, str] = {
    "encode": "bench.encode_speed",
    "train": "bench.train_speed",
    "gguf": "bench.gguf_speed",
    "matryoshka": "bench.matryoshka_speed",
    "sampling": "bench.eval_sampling",
}
# run only when named: `sampling` evaluates the full SciFact set per model (about an hour on 2 CPU cores)
BY_NAME_ONLY = {"sampling"}


def environment() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - torch missing
        pass
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), None)
        info["cpu_model"] = model
    except OSError:
        pass
    for pkg in ("transformers", "sentence_transformers"):
        try:
            info[pkg] = importlib.import_module(pkg).__version__
        except Exception:
            pass
    return info


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nbenchmarks: " + ", ".join(BENCHMARKS), file=sys.stderr)
        return 0
    names = []
    while argv and not argv[0].startswith("-"):
        name = argv.pop(0)
        if name not in BENCHMARKS:
            print(f"bench: error: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
            return 2
        names.append(name)
    names = names or [n for n in BENCHMARKS if n not in BY_NAME_ONLY]
    results: dict = {"environment": environment(), "benchmarks": {}}
    rc = 0
    for name in names:
        t0 = time.perf_counter()
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        try:
            out = importlib.import_module(BENCHMARKS[name]).run(list(argv))
        except Exception as e:  # one failing benchmark must not hide the others' numbers
            out = {"error": f"{type(e).__name__}: {e}"}
            rc = 1
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        results["benchmarks"][name] = out
    print(json.dumps(results, indent=2))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
