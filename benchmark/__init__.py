"""scalewise-bench's harness: ``from benchmark import run, evaluate, collect`` (benchmark/api.py).

The API is imported on first use, so that importing a harness module (or `python -m benchmark
--help`) does not load torch and every stage."""

__all__ = ["run", "evaluate", "collect"]


def __getattr__(name: str):
    if name in __all__:
        from benchmark import api
        return getattr(api, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
