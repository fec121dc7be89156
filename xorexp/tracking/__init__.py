"""Everything xorexp reads from and writes to MLflow: the only code that calls ``MlflowClient``.

One module per concern; callers import the module they need (``from xorexp.tracking import store,
writing``), and none of them imports MLflow before it talks to a store:

- ``tags``: the names of tags and artifacts xorexp writes (constants only);
- ``uri``: which tracking URIs work, ``redact`` for messages, a store's failures in one line;
- ``health``: a tracking server's or database server's health check, before MLflow touches it;
- ``sqlite``: the embedded store's file, checked, created race-free and repaired;
- ``opened_store``: ``Store``, an opened store and its experiment (what the rest of xorexp holds);
- ``store``: opening a store and its experiment, runs of crashed writers;
- ``writing``: a run from start to its terminal status, a sweep's parent;
- ``artifacts``: a run's files as its artifacts, in one upload;
- ``sql_writer``: a run's rows written straight into an SQL store's tables;
- ``reading``: runs, loss traces and artifacts read back;

A run's params, config hash and name are ``xorexp.params``; its provenance and MLflow model are
added by ``xorexp.run_logging`` (the Model layer), which writes through ``writing``.
"""
