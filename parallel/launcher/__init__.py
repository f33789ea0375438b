"""Entry points that run the ``Trainer``: the recipes' ``launch`` (``launch.py``), the throughput benchmark
(``bench.py``), and the checks made before any rank starts (``preflight.py``)."""
