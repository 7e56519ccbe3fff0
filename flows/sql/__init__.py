"""The project's raw SQL, in one place: the engine's writes and the API's hottest reads.

- ``writes``: the engine's hand-written UPDATE and INSERT statements and its lean
  transaction (``atomic``), used by the engine and by starting an execution.
- ``reads``: the status document's and the token look-up's SELECTs, built once per process.
- ``rules``: what every statement here must obey, checked in code while ``settings.DEBUG``
  is on (only identifiers from the models' metadata in the text, every value a parameter).
"""
