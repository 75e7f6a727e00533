"""What the AI did, measured from the radiologists' feedback: ``load`` reads the index and builds
the report, ``stats`` computes it (pure: values in, values out), ``text`` and ``plots`` show it.
``metrics``: what ``triage serve`` shows Prometheus (C-STORE answers, queues, durations).

May import: the kernel, ``store``.
"""
