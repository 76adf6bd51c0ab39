"""Support for the tests, the benchmarks and the fault suite; not part of the product's wheel.

One implementation each of what all three need: fresh databases on an embedded server
(``databases``), the `jobstatus` command as a subprocess (``cli``), the projection of what the
product wrote that two equal runs share (``state``), looking at processes (``processes``), and
the random shops and schedules of the convergence property (``convergence``).
"""
