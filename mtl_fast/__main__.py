"""Command line: ``mtl-fast info | demo | bench`` (also ``python -m mtl_fast ...``)."""
from __future__ import annotations

import sys
from typing import List, Optional

_USAGE = """usage: mtl-fast {info,demo,bench} [options]

  info    the installed build: versions, active backend, devices
  demo    train the classic MTL network with several multi-task strategies and compare them against the
          seed noise (`mtl-fast demo toy`: the two-task toy problem of the CAGrad and Nash-MTL papers)
  bench   benchmark mtl_fast against the per-task loop, TorchJD and its own reference

Run `mtl-fast COMMAND --help` for a command's options."""


def info() -> int:
    import platform

    import torch

    import mtl_fast
    from mtl_fast import _ops

    print(f"mtl_fast {mtl_fast.__version__}")
    print(f"backend  {mtl_fast.backend()}" + (f"  (extension not loaded: {_ops.extension_error})"
                                                 if _ops.extension_error else ""))
    print(f"torch    {torch.__version__}  (CUDA build: {torch.version.cuda or 'no'})")
    print(f"python   {platform.python_version()}  on {platform.machine()}, {torch.get_num_threads()} threads")
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    print(f"GPUs     {', '.join(gpus) if gpus else 'none visible'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        return info()
    if command == "demo":
        from .apps.demo import main as demo_main
        return demo_main(rest)
    if command == "bench":
        from .apps.bench import main as bench_main
        return bench_main(rest)
    print(f"mtl-fast: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
