"""loradex's tests. A package so that every test folder imports shared helpers the same way,
``from tests.support.hub import HubServer``, with the project root on ``sys.path`` (pytest's
``pythonpath = ["."]``). The folders below it stay without ``__init__.py``: pytest imports
their test files by folder, as before."""
