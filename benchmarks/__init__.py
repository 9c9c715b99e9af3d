"""Measurements of twisted-stow, not tests: run each as ``python3 -m benchmarks.NAME``.

Run from the repository root, so that ``benchmarks`` and ``tests`` (the
shared multipart builder ``tests.helpers`` and the one server launcher
``tests.launcher``) import as packages; README.md in this folder lists the
scripts and what they measured.
"""
