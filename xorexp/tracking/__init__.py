"""Everything xorexp reads from and writes to MLflow: the only code that calls ``MlflowClient``.

One module per concern; callers import the module they need (``from xorexp.tracking import store,
writing``), and none of them imports MLflow before it talks to a store:

- ``tags``: the names of tags and artifacts xorexp writes (constants only);
- ``uri``: which tracking URIs work, ``redact`` for messages, a store's failures in one line;
- ``health``: a tracking server's or database server's health check, before MLflow touches it;
- ``sqlite``: the embedded store's file, checked, created race-free and repaired;
- ``store``: opening a store and its experiment (``Store``), runs of crashed writers;
- ``writing``: a run from start to its terminal status, a sweep's parent, a replay's run;
- ``reading``: runs, loss traces and artifacts read back.

A run's params, config hash and name are ``xorexp.params``; its MLflow model is ``xorexp.pyfunc``.
"""
