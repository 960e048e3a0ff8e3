"""`python -m tests.fake_bench ARGS...` is `bench ARGS...` with the test-only method `fake` registered.

Worker processes spawned by `--executor gpus` re-import this module as their main module, so they see it too.
"""

from bench import registry

registry.METHODS.setdefault("fake", "tests.fake_method:FakeMethod")

if __name__ == "__main__":
    from bench.cli import main

    main()
