"""Fuzzing the pure core (issue 17 point 8): the parsers fed arbitrary bytes, split anyhow.

``properties`` holds the checks, one function per target, plain Python: the
suite's short run (``test_fuzz.py``, hypothesis, a few seconds) and the long
run share them.  The long run is a command::

    python -m tests.fuzz --minutes 10

It repeats the hypothesis properties with many more examples until the time
is up, then checks that each target's cost grows linearly (time at n and 4n
on adversarial inputs, best of several runs, a generous factor: too noisy
for the suite on a shared machine).  A failing example hypothesis finds is
printed; keep it in ``regressions.py`` so the suite replays it every run.
"""
